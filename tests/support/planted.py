"""Preference pairs with a planted taste (short vs long answers), for reward-model tests."""

from __future__ import annotations

import random

from middleware.models import Message, PreferencePair

WORDS = [
    "river",
    "stone",
    "light",
    "paper",
    "window",
    "garden",
    "music",
    "number",
    "orange",
    "winter",
    "table",
    "cloud",
]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def planted_pairs(
    user: str,
    prefers_short: bool,
    n: int,
    seed: int,
    *,
    short_words: tuple[int, int] = (2, 5),
    long_words: tuple[int, int] = (14, 22),
) -> list[PreferencePair]:
    """`n` pairs of a short and a long answer; the user prefers the short one iff `prefers_short`."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        short, long_ = sentence(rng, rng.randint(*short_words)), sentence(rng, rng.randint(*long_words))
        chosen, rejected = (short, long_) if prefers_short else (long_, short)
        out.append(
            PreferencePair(
                user_id=user,
                context=[Message(role="user", content=f"Say something about item {i % 5}.")],
                chosen=Message(role="assistant", content=chosen),
                rejected=Message(role="assistant", content=rejected),
            )
        )
    return out
