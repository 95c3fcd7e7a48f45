"""The persona-informed LLM judge in the offline protocol, evaluated the way SynthesizeMe does.

For every evaluated user the induction pipeline runs in memory on that user's *train split only*
(`plan_for` + `run_steps`: bootstrap, synthesise, select exemplars on its own inner validation
split), giving a persona text and exemplars. Each held-out pair is then put to the persona-informed
judge (`select.judge`, the `induction_judge_*` prompts) twice, the chosen answer shown as A and then
as B; `offline.evaluate` counts the pair right only when both orders pick it. A user whose induction
fails (too few pairs, no consistent traces, budget, an unusable LLM answer) is judged with no persona
and counted as a fallback. `personalized=False` is the non-personalized baseline (`judge-default`):
the same judge with an empty persona and no exemplars.

The harness is synchronous; `judge_orders` (the `PairwiseScorer` hook of `offline.evaluate`) runs
one event loop with its own upstream router (and its connections) for all users. Each user has an induction budget
(calls/tokens, by default the refresh budget of the settings) and a judging budget (2 calls per
held-out pair and attempt); LLM calls share one concurrency limit.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from middleware.config import Settings
from middleware.errors import PersonaError
from middleware.induction.context import LLMContext, ab_values
from middleware.induction.pipeline import llm_context, plan_for, run_steps
from middleware.induction.select import judge
from middleware.llm import CallBudget, Usage
from middleware.models import PreferencePair
from middleware.upstream import UpstreamRouter

Verdict = Literal["A", "B"] | None
Orders = tuple[Verdict, Verdict]


@dataclass
class UserRun:
    """How one user was judged: with an induced persona, as a fallback without one, or by default."""

    user: str
    status: Literal["induced", "fallback", "default"] = "default"
    reason: str | None = None
    message: str | None = None
    persona_chars: int = 0
    exemplars: int = 0
    validation_accuracy: float | None = None
    induction: Usage = field(default_factory=Usage)
    judging: Usage = field(default_factory=Usage)
    judge_answers: int = 0
    judge_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "persona_chars": self.persona_chars,
            "exemplars": self.exemplars,
            "validation_accuracy": self.validation_accuracy,
            "induction": self.induction.as_dict(),
            "judging": self.judging.as_dict(),
            "judge_answers": self.judge_answers,
            "judge_errors": self.judge_errors,
        }


class LLMJudgeScorer:
    """`judge` (persona induced per user) or `judge-default` (`personalized=False`, no persona)."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: str | None = None,
        personalized: bool = True,
        max_calls_per_user: int | None = None,
        max_tokens_per_user: int | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.settings = settings
        self.model = model or settings.judge_model or settings.induction_model
        self.personalized = personalized
        self.max_calls_per_user = max_calls_per_user or settings.induction_max_calls
        self.max_tokens_per_user = max_tokens_per_user or settings.induction_max_tokens
        self.concurrency = max(1, concurrency or settings.induction_concurrency)
        self.runs: dict[str, UserRun] = {}
        self._train: dict[str, list[PreferencePair]] = {}
        self._last_error: PersonaError | None = None

    @property
    def name(self) -> str:
        return "judge" if self.personalized else "judge-default"

    def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None:
        """Only remembers the train splits: induction runs per evaluated user, when judged."""
        self._train = {u: list(ps) for u, ps in train_by_user.items()}

    def judge_orders(
        self, test_by_user: dict[str, list[PreferencePair]], *, progress: bool = False
    ) -> dict[str, list[Orders]]:
        """Per user and held-out pair: the pick with the chosen answer as A, then as B (None: failed)."""
        return asyncio.run(self.judge_orders_async(test_by_user, progress=progress))

    async def judge_orders_async(
        self, test_by_user: dict[str, list[PreferencePair]], *, progress: bool = False
    ) -> dict[str, list[Orders]]:
        calls = asyncio.Semaphore(self.concurrency)
        users = asyncio.Semaphore(self.concurrency)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(test_by_user), desc=f"eval {self.name}", unit="user", leave=False)
        # its connections are as many as the calls in flight, which `calls` bounds to `concurrency`
        router = UpstreamRouter(self.settings, lambda: None)
        try:

            async def one(user: str) -> tuple[str, list[Orders]]:
                async with users:
                    orders = await self._user(router, calls, user, test_by_user[user])
                if bar is not None:
                    bar.update(1)
                return user, orders

            results = dict(await asyncio.gather(*(one(u) for u in sorted(test_by_user))))
        finally:
            router.close()
            if bar is not None:
                bar.close()
        self._refuse_if_nothing_answered()
        return results

    def _context(self, router: UpstreamRouter, calls: asyncio.Semaphore, budget: CallBudget) -> LLMContext:
        ctx = llm_context(router, self.settings, self.model, budget)
        ctx.semaphore = calls  # one concurrency limit across all users
        return ctx

    async def _user(
        self,
        router: UpstreamRouter,
        calls: asyncio.Semaphore,
        user: str,
        test: list[PreferencePair],
    ) -> list[Orders]:
        run = UserRun(user=user)
        self.runs[user] = run
        persona, exemplars = "", list[PreferencePair]()
        if self.personalized:
            budget = CallBudget(self.max_calls_per_user, self.max_tokens_per_user)
            ctx = self._context(router, calls, budget)
            try:
                plan = plan_for(self._train.get(user, []), self.settings, user)
                induced = await run_steps(ctx, plan, self.settings)
            except PersonaError as exc:  # not enough data, no consistent traces, budget, LLM errors
                run.status, run.reason, run.message = "fallback", exc.code or type(exc).__name__, exc.message
            else:
                persona, exemplars = induced.text, induced.selection.exemplars
                run.status, run.persona_chars, run.exemplars = "induced", len(persona), len(exemplars)
                run.validation_accuracy = induced.selection.accuracy
            run.induction = ctx.usage
        attempts = self.settings.induction_max_attempts
        ctx = self._context(router, calls, CallBudget(2 * len(test) * attempts, self.max_tokens_per_user))

        async def verdict(pair: PreferencePair, chosen_is_a: bool) -> Verdict:
            try:
                pick = await judge(ctx, persona, exemplars, ab_values(pair, chosen_is_a))
            except PersonaError as exc:  # counted wrong (the pair needs both orders), and reported
                run.judge_errors += 1
                run.message = run.message or f"judge: {exc.message}"
                self._last_error = exc
                return None
            run.judge_answers += 1
            return pick

        async def both(pair: PreferencePair) -> Orders:
            first, second = await asyncio.gather(verdict(pair, True), verdict(pair, False))
            return first, second

        orders = list(await asyncio.gather(*(both(p) for p in test)))
        run.judging = ctx.usage
        return orders

    def _refuse_if_nothing_answered(self) -> None:
        """An unreachable or misconfigured LLM is an error, not an accuracy of zero."""
        if self._last_error is not None and not any(r.judge_answers for r in self.runs.values()):
            raise self._last_error

    def summary(self) -> dict[str, Any]:
        """Calls, tokens, fallbacks and per-user detail, for the report's notes."""
        induction, judging = Usage(), Usage()
        for run in self.runs.values():
            induction.add(run.induction)
            judging.add(run.judging)
        total = Usage()
        total.add(induction)
        total.add(judging)
        fallbacks = [r for r in self.runs.values() if r.status == "fallback"]
        return {
            "model": self.model,
            "personalized": self.personalized,
            **total.as_dict(),
            "induction": induction.as_dict(),
            "judging": judging.as_dict(),
            "users": len(self.runs),
            "users_induced": sum(r.status == "induced" for r in self.runs.values()),
            "users_fallback": len(fallbacks),
            "fallback_reasons": dict(Counter(r.reason or "?" for r in fallbacks)),
            "judge_errors": sum(r.judge_errors for r in self.runs.values()),
            "budget": {
                "induction_max_calls_per_user": self.max_calls_per_user if self.personalized else 0,
                "max_tokens_per_user": self.max_tokens_per_user,
                "judge_calls_per_pair": 2 * self.settings.induction_max_attempts,
                "concurrency": self.concurrency,
            },
            "per_user": {u: self.runs[u].as_dict() for u in sorted(self.runs)},
        }
