"""Per-context personas: grouping a user's pairs by context, and the router that picks one for a call.

A context is named by the app (a tag, `metadata.context` or `X-Persona-Context`) or, for pairs that
carry none, found by clustering the pairs' prompts. The router compares the last user turn of a call
with each context's centroid: TF-IDF over lower-cased word terms, cosine similarity, pure Python (no
torch on the hot path). The centroids and the IDF table are built at induction time and stored with
the context personas (`RouterSpec`), so the chat path reads them in the same round trip as the
persona and decodes them once per `router_id` (README "Contexts").
"""

from __future__ import annotations

import math
import random
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, Field

from middleware.models import PreferencePair, message_text

# A tag names a key segment and a header value: letters, digits, '.', '_', '-'.
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
GENERAL = "general"  # the decision when no context persona is used (never a context's name)
# Terms: lower-cased runs of ASCII letters and digits and of any non-ASCII characters (so words in
# other scripts count too), split by one bytes.translate (much cheaper than a regex on the hot path).
_SEPARATORS = bytes(c if (48 <= c <= 57 or 97 <= c <= 122 or c >= 128) else 32 for c in range(256))
# Routing reads at most this many characters of the turn (its start): the cost stays bounded.
ROUTE_TEXT_CHARS = 2000
TOP_TERMS = 200  # terms kept per centroid
IDF_TERMS = 2000  # terms kept in the stored IDF table (the most widespread first)

Decision = Literal["tag", "similar", "general"]


def valid_tag(tag: str) -> bool:
    return tag != GENERAL and TAG_RE.match(tag) is not None


def terms(text: str) -> Counter[str]:
    words = text[:ROUTE_TEXT_CHARS].lower().encode().translate(_SEPARATORS).decode(errors="ignore").split()
    return Counter([w for w in words if len(w) > 1])  # a list: no generator resumed word by word


def prompt_text(pair: PreferencePair) -> str:
    """What a pair is about for routing: its last user turn (the same text a chat call is routed by)."""
    for message in reversed(pair.context):
        if message.role == "user":
            return message_text(message)
    return message_text(pair.context[-1]) if pair.context else ""


def last_user_text(messages: Sequence[Any]) -> str:
    """The last user turn of a chat body's `messages` (dicts as sent), or ''."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


# --- vectors -------------------------------------------------------------------------------------------
def _weights(counts: Counter[str], idf: dict[str, float], default_idf: float) -> dict[str, float]:
    vector = {t: (1.0 + math.log(c)) * idf.get(t, default_idf) for t, c in counts.items()}
    norm = math.sqrt(sum([w * w for w in vector.values()]))
    return {t: w / norm for t, w in vector.items()} if norm else {}


def _idf(docs: Sequence[Counter[str]]) -> tuple[dict[str, float], float]:
    df: Counter[str] = Counter()
    for doc in docs:
        df.update(doc.keys())
    n = len(docs)
    table = {t: math.log((1 + n) / (1 + d)) + 1.0 for t, d in df.items()}
    return table, math.log(1 + n) + 1.0


def _centroid(vectors: Iterable[dict[str, float]], top: int = TOP_TERMS) -> dict[str, float]:
    total: dict[str, float] = {}
    for vector in vectors:
        for t, w in vector.items():
            total[t] = total.get(t, 0.0) + w
    kept = dict(sorted(total.items(), key=lambda item: -item[1])[:top])
    norm = math.sqrt(sum(w * w for w in kept.values()))
    return {t: w / norm for t, w in kept.items()} if norm else {}


def _dot(a: dict[str, float], b: dict[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(w * b.get(t, 0.0) for t, w in a.items())


# --- the stored router -----------------------------------------------------------------------------
class ContextCentroid(BaseModel):
    name: str
    pairs: int
    grouping: Literal["tag", "cluster"]
    centroid: dict[str, float]


class RouterSpec(BaseModel):
    """What the router needs, stored beside the context personas (its id first: see `ROUTER_HEAD`)."""

    router_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    default_idf: float
    idf: dict[str, float]
    contexts: list[ContextCentroid]


ROUTER_HEAD = re.compile(rb'\{"router_id":"([0-9A-Za-z_-]{1,64})"')


@dataclass(frozen=True)
class Route:
    decision: Decision
    context: str | None  # None: the general persona
    score: float = 0.0


class Router:
    """A decoded `RouterSpec` with an inverted index: routing costs one dict lookup per query term."""

    def __init__(self, spec: RouterSpec) -> None:
        self.spec = spec
        self.names = [c.name for c in spec.contexts]
        self._idf = spec.idf
        self._default_idf = spec.default_idf
        index: dict[str, list[tuple[int, float]]] = {}
        for i, context in enumerate(spec.contexts):
            for t, w in context.centroid.items():
                index.setdefault(t, []).append((i, w))
        self._index = index

    def vector(self, text: str) -> dict[str, float]:
        return _weights(terms(text), self._idf, self._default_idf)

    def scores(self, text: str) -> list[float]:
        scores = [0.0] * len(self.names)
        index = self._index
        for t, w in self.vector(text).items():
            for i, c in index.get(t, ()):
                scores[i] += w * c
        return scores

    def route(self, text: str, threshold: float, available: Iterable[str] | None = None) -> Route:
        """The most similar context (among `available`, default all) if its cosine similarity to
        `text` reaches `threshold`, else the general persona."""
        allowed = set(self.names if available is None else available)
        if not text or not allowed:
            return Route("general", None)
        best, best_score = None, 0.0
        for name, score in zip(self.names, self.scores(text), strict=True):
            if name in allowed and score > best_score:
                best, best_score = name, score
        if best is None or best_score < threshold:
            return Route("general", None, best_score)
        return Route("similar", best, best_score)


def choose(
    router: Router | None, available: Iterable[str], *, tag: str | None, text: str, threshold: float
) -> Route:
    """The context step of persona resolution: the request's tag when the user has a persona for
    it, else the context most similar to the last user turn (above `threshold`), else general."""
    names = set(available)
    if tag is not None:
        return Route("tag", tag, 1.0) if tag in names else Route("general", None)
    if router is None or not names:
        return Route("general", None)
    return router.route(text, threshold, names)


# --- grouping at induction time ------------------------------------------------------------------------
@dataclass
class Group:
    name: str
    grouping: Literal["tag", "cluster"]
    pairs: list[PreferencePair]


def _sum(vectors: Iterable[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for vector in vectors:
        for t, w in vector.items():
            total[t] = total.get(t, 0.0) + w
    return total


def _cos(a: dict[str, float], b: dict[str, float]) -> float:
    norm = math.sqrt(sum(w * w for w in b.values()))
    return _dot(a, b) / norm if norm > 1e-12 else 0.0


def _closeness(sums: list[dict[str, float]], v: dict[str, float], own: int, j: int) -> float:
    """Cosine of `v` with cluster `j`'s sum, `v` itself left out of its own cluster."""
    return _cos(v, {t: w - v.get(t, 0.0) for t, w in sums[j].items()} if j == own else sums[j])


def _kmeans(vectors: list[dict[str, float]], k: int, seed: int, rounds: int = 30) -> list[int]:
    """Spherical k-means from `k` prompts drawn with `seed`, where a prompt is compared with the
    rest of its own cluster (itself left out, as in `_margin`); returns each vector's cluster."""
    centers = [vectors[i] for i in random.Random(seed).sample(range(len(vectors)), k)]
    assign = [max(range(k), key=lambda j: _dot(v, centers[j])) for v in vectors]
    for _ in range(rounds):
        sums = [_sum(v for v, a in zip(vectors, assign, strict=True) if a == j) for j in range(k)]

        new = [
            max(range(k), key=partial(_closeness, sums, v, a)) for v, a in zip(vectors, assign, strict=True)
        ]
        if new == assign:
            break
        assign = new
    return assign


def _margin(vectors: list[dict[str, float]], assign: list[int], k: int) -> float:
    """Mean over prompts of (similarity to the rest of its own cluster - best similarity to another
    cluster). Leaving the prompt out of its own cluster matters: short prompts that share nothing
    would otherwise look close to any cluster they are in."""
    sums = [_sum(v for v, a in zip(vectors, assign, strict=True) if a == j) for j in range(k)]
    total = 0.0
    for v, a in zip(vectors, assign, strict=True):
        rest = {t: w - v.get(t, 0.0) for t, w in sums[a].items()}
        other = max((_cos(v, s) for j, s in enumerate(sums) if j != a), default=0.0)
        total += _cos(v, rest) - other
    return total / len(vectors)


RESTARTS = 8


def cluster(
    pairs: list[PreferencePair], *, min_pairs: int, max_clusters: int, min_margin: float
) -> list[list[PreferencePair]]:
    """Untagged pairs grouped by their prompts: spherical k-means (`RESTARTS` starts) for k from 2
    to the most that leaves every cluster `min_pairs`, each clustering scored by `_margin`; the best
    is kept if its margin reaches `min_margin`, else no context is found."""
    if len(pairs) < 2 * min_pairs:
        return []
    docs = [terms(prompt_text(p)) for p in pairs]
    idf, default_idf = _idf(docs)
    vectors = [_weights(d, idf, default_idf) or {"": 1.0} for d in docs]
    best: tuple[float, list[int], int] | None = None
    for k in range(2, min(max_clusters, len(pairs) // min_pairs) + 1):
        for seed in range(RESTARTS):
            assign = _kmeans(vectors, k, seed)
            if min(Counter(assign).get(j, 0) for j in range(k)) < min_pairs:
                continue
            margin = _margin(vectors, assign, k)
            if best is None or margin > best[0]:
                best = (margin, assign, k)
    if best is None or best[0] < min_margin:
        return []
    _, assign, k = best
    return [[p for p, a in zip(pairs, assign, strict=True) if a == j] for j in range(k)]


def cluster_name(pairs: list[PreferencePair], taken: set[str]) -> str:
    """`topic-<the cluster's most distinctive term>`, made unique."""
    counts: Counter[str] = Counter()
    for p in pairs:
        counts.update(set(terms(prompt_text(p))))
    words = [t for t, _ in counts.most_common(50) if len(t) > 3 and not t.isdigit()] or ["context"]
    base = f"topic-{words[0]}"[:56]
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def group_pairs(
    pairs: list[PreferencePair], *, min_pairs: int, max_contexts: int, min_margin: float
) -> list[Group]:
    """A user's pairs by context: by tag where present, else by clustering the untagged prompts.
    Only groups with at least `min_pairs` pairs, at most `max_contexts` (the largest)."""
    tagged: dict[str, list[PreferencePair]] = {}
    untagged: list[PreferencePair] = []
    for p in pairs:
        if p.context_tag:
            tagged.setdefault(p.context_tag, []).append(p)
        else:
            untagged.append(p)
    groups = [Group(name, "tag", ps) for name, ps in tagged.items() if len(ps) >= min_pairs]
    taken = set(tagged)
    for members in cluster(untagged, min_pairs=min_pairs, max_clusters=max_contexts, min_margin=min_margin):
        name = cluster_name(members, taken)
        taken.add(name)
        groups.append(Group(name, "cluster", members))
    groups.sort(key=lambda g: (-len(g.pairs), g.name))
    return groups[:max_contexts]


def build_router(groups: dict[str, tuple[Literal["tag", "cluster"], list[str]]]) -> RouterSpec:
    """Centroids of each context's prompts (name -> (grouping, prompt texts)) and the IDF table."""
    docs_by = {name: [terms(t) for t in texts] for name, (_, texts) in groups.items()}
    all_docs = [d for docs in docs_by.values() for d in docs]
    idf, default_idf = _idf(all_docs)
    contexts = [
        ContextCentroid(
            name=name,
            pairs=len(docs),
            grouping=groups[name][0],
            centroid={
                t: round(w, 5) for t, w in _centroid(_weights(d, idf, default_idf) for d in docs).items()
            },
        )
        for name, docs in docs_by.items()
    ]
    df: Counter[str] = Counter()
    for d in all_docs:
        df.update(d.keys())
    kept = {t for t, _ in df.most_common(IDF_TERMS)} | {t for c in contexts for t in c.centroid}
    return RouterSpec(
        default_idf=round(default_idf, 5), idf={t: round(idf[t], 5) for t in kept}, contexts=contexts
    )
