"""Learned segments for a tenant with no categories of its own: users grouped by their tastes.

Each user is one vector, the mean over their preference pairs of (chosen − rejected), where an answer
is a hashed bag of its words and word bigrams (L2-normalised) plus its log length; k-means with
cosine distance (k-means++ starts, several restarts, seeded) groups the users, and each group becomes
an ordinary segment with its members assigned (`SegmentStore`). Two users who prefer the same kind of
answer point the same way whatever their prompts were about; users with opposite tastes point in
opposite directions.

Why hashed words and not the `lora` extra's sentence encoder: this runs in any install (numpy only,
no torch, no model download), a tenant's whole history is vectorised in seconds on a CPU, and the
grouping needs the direction of a user's taste (which words and how much length they reward), which
the bag of words of the two answers carries.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from middleware.errors import NotEnoughData
from middleware.models import PreferencePair, message_text
from middleware.store.preferences import PreferenceStore
from middleware.store.segments import SegmentStore
from middleware.store.users import UserIndex

DIMENSIONS = 2**12
_WORD_RE = re.compile(r"[a-z0-9']+")


def answer_vector(text: str) -> np.ndarray:
    """A hashed bag of words and word bigrams (L2-normalised), then the log length."""
    words = _WORD_RE.findall(text.lower())
    vector = np.zeros(DIMENSIONS + 1)
    for token in words + [f"{a} {b}" for a, b in itertools.pairwise(words)]:
        vector[zlib.crc32(token.encode()) % DIMENSIONS] += 1.0
    norm = np.linalg.norm(vector[:DIMENSIONS])
    if norm > 0:
        vector[:DIMENSIONS] /= norm
    vector[DIMENSIONS] = math.log1p(len(text)) / 4.0  # about the weight of one strong word
    return vector


def taste_vector(pairs: list[PreferencePair]) -> np.ndarray:
    """The mean of chosen − rejected over a user's pairs, L2-normalised."""
    diffs = [answer_vector(message_text(p.chosen)) - answer_vector(message_text(p.rejected)) for p in pairs]
    mean: np.ndarray = np.mean(diffs, axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else mean


def kmeans(
    points: np.ndarray, k: int, *, seed: int = 0, restarts: int = 8, iterations: int = 100
) -> np.ndarray:
    """Cosine k-means (rows are unit vectors): the label of each row, from the best of `restarts`."""
    rng = np.random.default_rng(seed)
    best_labels, best_score = np.zeros(len(points), dtype=int), -np.inf
    for _ in range(restarts):
        centres = [points[rng.integers(len(points))]]
        while len(centres) < k:  # k-means++: far points are likelier starts
            distance = np.clip(1.0 - np.max(points @ np.array(centres).T, axis=1), 0.0, None)
            total = distance.sum()
            pick = rng.choice(len(points), p=distance / total) if total > 0 else rng.integers(len(points))
            centres.append(points[pick])
        centre = np.array(centres)
        labels = np.full(len(points), -1)
        for _ in range(iterations):
            new = np.argmax(points @ centre.T, axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = points[labels == j]
                if len(members):
                    mean = members.sum(axis=0)
                    centre[j] = mean / (np.linalg.norm(mean) or 1.0)
        score = float(np.sum(np.max(points @ centre.T, axis=1)))
        if score > best_score:
            best_labels, best_score = labels, score
    return best_labels


@dataclass(frozen=True)
class LearnedSegments:
    segments: dict[str, list[str]]  # segment name -> its users
    skipped: list[str]  # users without enough pairs

    def as_dict(self) -> dict[str, Any]:
        return {
            "segments": {
                name: {"members": len(users), "users": users} for name, users in self.segments.items()
            },
            "skipped_users": self.skipped,
        }


async def learn_segments(
    users: UserIndex,
    preferences: PreferenceStore,
    segments: SegmentStore,
    tenant: str,
    *,
    k: int,
    prefix: str = "learned",
    min_pairs: int = 1,
    seed: int = 0,
) -> LearnedSegments:
    """Group the tenant's users into `k` segments named `<prefix>-1` … `<prefix>-k` and assign them
    (a user's earlier assignment is replaced)."""
    names, vectors, skipped = [], [], []
    for user in await users.members(tenant):
        pairs = await preferences.pairs(tenant, user)
        if len(pairs) < min_pairs:
            skipped.append(user)
            continue
        names.append(user)
        vectors.append(taste_vector(pairs))
    if len(names) < k:
        raise NotEnoughData(
            f"not enough data: {len(names)} users of tenant {tenant!r} have at least {min_pairs} "
            f"preference pairs, {k} segments need at least {k}"
        )
    labels = kmeans(np.array(vectors), k, seed=seed)
    # Biggest group first, so names are stable across runs on the same data.
    order = sorted(range(k), key=lambda j: (-int(np.sum(labels == j)), j))
    grouped: dict[str, list[str]] = {}
    for rank, j in enumerate(order, start=1):
        grouped[f"{prefix}-{rank}"] = sorted(n for n, label in zip(names, labels, strict=True) if label == j)
    description = f"learned: k-means (k={k}) over each user's mean chosen-minus-rejected answer vector"
    for name, members in grouped.items():
        await segments.put(tenant, name, description)
        await segments.assign_many(tenant, dict.fromkeys(members, name))
    return LearnedSegments(grouped, skipped)
