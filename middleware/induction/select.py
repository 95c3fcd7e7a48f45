"""Step 4: choose exemplar pairs by the accuracy of a persona-informed judge on validation pairs.

The judge sees the persona, the candidate exemplars, and a validation pair in both orders; a pair
counts as correct only when both orders pick the user's real choice (an order-dependent answer is
wrong). Candidate sets are the empty set plus random subsets of the confirmed training pairs, as many
as the call budget affords.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from middleware.errors import BudgetExceeded
from middleware.induction.context import (
    LLMContext,
    Progress,
    ab_values,
    report,
    run_all,
)
from middleware.models import PreferencePair
from middleware.personalize.block import exemplar_view

EXEMPLAR_MAX_CHARS = 800


class JudgeVerdict(BaseModel):
    reasoning: str
    preferred: Literal["A", "B"]


async def judge(
    ctx: LLMContext,
    persona: str,
    exemplars: list[PreferencePair],
    values: dict[str, Any],
) -> Literal["A", "B"]:
    """The persona-informed judge's pick for one A/B presentation (`values` from `ab_values`)."""
    full = {
        **values,
        "persona": persona,
        "exemplars": [exemplar_view(p, EXEMPLAR_MAX_CHARS) for p in exemplars],
    }
    verdict = await ctx.call("induction_judge", full, JudgeVerdict)
    return verdict.preferred


async def pair_correct(
    ctx: LLMContext, persona: str, exemplars: list[PreferencePair], pair: PreferencePair
) -> bool:
    first = await judge(ctx, persona, exemplars, ab_values(pair, True))
    second = await judge(ctx, persona, exemplars, ab_values(pair, False))
    return first == "A" and second == "B"


def candidate_sets(
    pool: list[PreferencePair], *, max_size: int, count: int, rng: random.Random
) -> list[list[PreferencePair]]:
    """The empty set, then up to `count` distinct random non-empty subsets of `pool`."""
    sets: list[list[PreferencePair]] = [[]]
    seen: set[tuple[str, ...]] = set()
    if not pool or max_size <= 0:
        return sets
    attempts = 0
    while len(sets) < count + 1 and attempts < count * 20:
        attempts += 1
        size = rng.randint(1, min(max_size, len(pool)))
        chosen = rng.sample(pool, size)
        key = tuple(sorted(p.stable_id() for p in chosen))
        if key not in seen:
            seen.add(key)
            sets.append(chosen)
    return sets


@dataclass
class Selection:
    exemplars: list[PreferencePair]
    accuracy: float
    scores: list[dict[str, Any]]


async def select_exemplars(
    ctx: LLMContext,
    persona: str,
    pool: list[PreferencePair],
    validation: list[PreferencePair],
    *,
    max_size: int,
    sets: int,
    seed: int,
    progress: Progress | None = None,
) -> Selection:
    per_set = 2 * len(validation)
    if not validation:
        return Selection(exemplars=[], accuracy=0.0, scores=[])
    affordable = ctx.budget.remaining_calls // per_set
    if affordable < 1:
        raise BudgetExceeded(
            f"the call budget cannot score even the empty exemplar set ({per_set} calls needed)"
        )
    candidates = candidate_sets(
        pool, max_size=max_size, count=min(sets, affordable - 1), rng=random.Random(seed)
    )
    total = len(candidates) * len(validation)
    done = 0

    async def score_pair(exemplars: list[PreferencePair], pair: PreferencePair) -> bool:
        nonlocal done
        correct = await pair_correct(ctx, persona, exemplars, pair)
        done += 1
        await report(progress, stage="select", done=done, total=total)
        return correct

    flat = await run_all([score_pair(c, p) for c in candidates for p in validation])
    # Accuracy weighted by each validation pair's weight (implied pairs count less than judgements).
    weights = [p.pair_weight for p in validation]
    total_weight = sum(weights) or 1.0
    scores: list[dict[str, Any]] = []
    accuracies: list[float] = []
    for i, candidate in enumerate(candidates):
        correct = flat[i * len(validation) : (i + 1) * len(validation)]
        hits = sum(correct)
        accuracy = sum(w for w, hit in zip(weights, correct, strict=True) if hit) / total_weight
        scores.append(
            {
                "exemplar_ids": [p.stable_id() for p in candidate],
                "correct": hits,
                "accuracy": accuracy,
            }
        )
        accuracies.append(accuracy)
    # Best accuracy; ties go to the smaller set (the empty set first).
    best = max(range(len(candidates)), key=lambda i: (accuracies[i], -len(candidates[i]), -i))
    return Selection(exemplars=candidates[best], accuracy=accuracies[best], scores=scores)
