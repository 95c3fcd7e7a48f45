"""The built-in `judge` reranker: the persona-informed LLM judge of induction, pairwise, both orders.

Every pair of candidates is judged twice (A/B and B/A), so a judge that always prefers the first
position adds nothing. A candidate's score is its share of wins over all its comparisons. Its calls
are declared (`scoring_calls`) and its tokens reported (`Scores.usage`, or `ScoringFailed.usage`), so
rerank mode admits and counts them against the tenant's quotas like the candidates'.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from middleware.config import Settings
from middleware.induction.context import conversation_view
from middleware.induction.select import EXEMPLAR_MAX_CHARS, JudgeVerdict
from middleware.llm import CallBudget, structured_call
from middleware.models import Message
from middleware.personalize.block import clip, exemplar_view
from middleware.prompts import render
from middleware.rerank.hookspec import EndUser
from middleware.rerank.resources import RerankResources

if TYPE_CHECKING:
    from middleware.rerank.registry import RerankerRegistry

TEMPLATE = "induction_judge"
CANDIDATE_MAX_CHARS = 4000


class Scores(list[float]):
    """One score per candidate, with the usage of the calls that produced them."""

    def __init__(self, scores: Sequence[float], usage: dict[str, int]) -> None:
        super().__init__(scores)
        self.usage = usage


class ScoringFailed(Exception):
    """A judge call failed; `usage` holds what the calls made so far used."""

    def __init__(self, cause: BaseException, usage: dict[str, int]) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.usage = usage


class JudgeReranker:
    name = "judge"

    def __init__(
        self, resources: RerankResources, *, model: str, concurrency: int = 8, max_attempts: int = 2
    ) -> None:
        self._resources = resources
        self._model = model
        self._semaphore = asyncio.Semaphore(concurrency)
        self._max_attempts = max_attempts

    def scoring_calls(self, n: int) -> int:
        """Judge calls for n candidates: every ordered pair once (a malformed answer's retry is
        counted once made)."""
        return n * (n - 1) if n >= 2 else 0

    async def score(
        self, context: Sequence[dict[str, Any]], candidates: Sequence[str], *, user: EndUser | None
    ) -> list[float]:
        n = len(candidates)
        if n < 2:
            return [1.0] * n
        persona = await self._resources.persona(user)  # the version the request was given
        base = {
            "persona": persona.text if persona else "",
            "exemplars": [exemplar_view(p, EXEMPLAR_MAX_CHARS) for p in persona.exemplars] if persona else [],
            "conversation": conversation_view([Message.model_validate(m) for m in context]),
        }
        orders = [(i, j) for i, j in itertools.permutations(range(n), 2)]
        budget = CallBudget(max_calls=len(orders) * self._max_attempts, max_tokens=10**9)

        async def verdict(i: int, j: int) -> tuple[int, int, str]:
            values = {
                **base,
                "completion_a": clip(candidates[i], CANDIDATE_MAX_CHARS),
                "completion_b": clip(candidates[j], CANDIDATE_MAX_CHARS),
            }
            messages = [
                {"role": "system", "content": render(f"{TEMPLATE}_system.j2", **values)},
                {"role": "user", "content": render(f"{TEMPLATE}_user.j2", **values)},
            ]
            parsed, _ = await structured_call(
                self._resources.upstreams,
                self._model,
                messages,
                JudgeVerdict,
                budget=budget,
                max_attempts=self._max_attempts,
                semaphore=self._semaphore,
            )
            return i, j, parsed.preferred

        verdicts = await asyncio.gather(*(verdict(i, j) for i, j in orders), return_exceptions=True)
        usage = budget.used.as_dict()
        failed = next((v for v in verdicts if isinstance(v, BaseException)), None)
        if failed is not None:
            raise ScoringFailed(failed, usage) from failed
        wins = [0.0] * n
        for verdict_of in verdicts:
            assert not isinstance(verdict_of, BaseException)
            i, j, preferred = verdict_of
            wins[i if preferred == "A" else j] += 1.0
        comparisons = 2 * (n - 1)
        return Scores([w / comparisons for w in wins], usage)


def create_judge_reranker(settings: Settings, resources: RerankResources) -> JudgeReranker:
    return JudgeReranker(resources, model=settings.judge_model or settings.induction_model)


def register(registry: RerankerRegistry) -> None:
    """Entry point of `middleware.rerankers`."""
    registry.add("judge", create_judge_reranker)
