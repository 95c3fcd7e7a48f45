"""The SynthesizeMe pipeline for one user: split, bootstrap, synthesise, select, store.

Nothing is written until the very end, where `PersonaStore.save` stores the new version and makes
it current in one transaction: a run that fails, runs out of budget or is cancelled leaves the
current persona exactly as it was.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from middleware.config import Settings
from middleware.errors import BudgetExceeded, NotEnoughData
from middleware.induction.bootstrap import Trace, bootstrap
from middleware.induction.context import LLMContext, Progress, report
from middleware.induction.provenance import INDUCTION, SEGMENT_INDUCTION, induced_provenance, made_by
from middleware.induction.select import Selection, select_exemplars
from middleware.induction.synthesize import synthesize
from middleware.llm import CallBudget
from middleware.models import Persona, PreferencePair
from middleware.quotas.service import Quotas
from middleware.store import keys
from middleware.store.contexts import ContextStore
from middleware.store.personas import PersonaStore
from middleware.store.preferences import PreferenceStore
from middleware.upstream import UpstreamRouter


def time_order(pairs: list[PreferencePair]) -> list[PreferencePair]:
    """Oldest first: by timestamp where every pair has one, else the log's own (arrival) order."""
    if pairs and all(p.timestamp for p in pairs):
        return sorted(pairs, key=lambda p: str(p.timestamp))
    return list(pairs)


def split(
    pairs: list[PreferencePair], validation_fraction: float
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Time-ordered split: the oldest ~70% train, the newest ~30% validate (at least one of each)."""
    n = len(pairs)
    n_val = int(n * validation_fraction + 1e-9)
    n_val = min(max(n_val, 1 if n >= 2 else 0), n - 1) if n else 0
    return pairs[: n - n_val], pairs[n - n_val :]


@dataclass
class Plan:
    train: list[PreferencePair]
    validation: list[PreferencePair]

    @property
    def minimum_calls(self) -> int:
        """Calls a run needs at the very least: one per train pair, synthesis, the empty set."""
        return len(self.train) + 1 + 2 * len(self.validation)


def llm_context(upstreams: UpstreamRouter, settings: Settings, model: str, budget: CallBudget) -> LLMContext:
    return LLMContext(
        upstreams=upstreams,
        model=model,
        budget=budget,
        concurrency=settings.induction_concurrency,
        max_attempts=settings.induction_max_attempts,
        max_completion_tokens=settings.induction_max_completion_tokens,
    )


def new_budget(settings: Settings) -> CallBudget:
    return CallBudget(settings.induction_max_calls, settings.induction_max_tokens)


def plan_for(pairs: list[PreferencePair], settings: Settings, user: str) -> Plan:
    """Time-order and split one user's pairs; NotEnoughData below `induction_min_pairs`."""
    pairs = time_order(pairs)
    if len(pairs) < settings.induction_min_pairs:
        raise NotEnoughData(
            f"not enough data: user {user!r} has {len(pairs)} preference pairs, induction needs at "
            f"least {settings.induction_min_pairs}"
        )
    train, validation = split(pairs, settings.induction_validation_fraction)
    return Plan(train, validation)


@dataclass(frozen=True)
class UserPairs:
    """One read of a user's preference pairs, shared by the steps of a refresh (the general persona,
    the context personas, the adapter), so that they all learn from the same pairs.
    `new_since_refresh` is read first: every pair it counts is among `pairs`."""

    pairs: list[PreferencePair]
    new_since_refresh: int


@dataclass(frozen=True)
class Induction:
    """The whole pipeline for one user at a time: reads the user's pairs, calls the LLM, stores the
    new persona version."""

    settings: Settings
    upstreams: UpstreamRouter
    personas: PersonaStore
    preferences: PreferenceStore
    quotas: Quotas
    contexts: ContextStore  # the per-context persona lines (`induction.contexts`)

    async def read_pairs(self, tenant: str, user: str) -> UserPairs:
        """The user's pairs, read once for all the steps of a refresh (`UserPairs`)."""
        new_since_refresh = await self.preferences.pairs_since_refresh(tenant, user)
        return UserPairs(await self.preferences.pairs(tenant, user), new_since_refresh)

    async def already_done(self, tenant: str, user: str, job_id: str | None) -> Persona | None:
        """A retried job whose first try already stored its version (crash after the save)."""
        if job_id is None:
            return None
        return made_by(await self.personas.list_versions(tenant, user), job_id)

    async def induce(
        self,
        tenant: str,
        user: str,
        *,
        pairs: UserPairs | None = None,
        model: str | None = None,
        job_id: str | None = None,
        progress: Progress | None = None,
        budget: CallBudget | None = None,
    ) -> dict[str, Any]:
        """Run the whole pipeline and store a new persona version; returns a summary of the run.
        `pairs`: the user's pairs as the caller read them (`read_pairs`), else read here.

        Raises NotEnoughData, BudgetExceeded, LLMOutputError or UpstreamError without storing anything.
        """
        settings = self.settings
        model = model or settings.induction_model
        started = time.perf_counter()
        existing = await self.already_done(tenant, user, job_id)
        if existing is not None:
            return summary(existing, reused=True)

        if pairs is None:
            pairs = await self.read_pairs(tenant, user)
        plan = plan_for(pairs.pairs, settings, user)
        ctx = llm_context(self.upstreams, settings, model, budget or new_budget(settings))
        try:
            induced = await run_steps(ctx, plan, settings, progress=progress)
        finally:  # the calls count against the tenant's quotas, whether the run succeeded or not
            await self.quotas.record_job(tenant, ctx.usage.calls, ctx.usage.total_tokens)
        provenance = induced_provenance(
            INDUCTION,
            ctx=ctx,
            job_id=job_id,
            plan=plan,
            induced=induced,
            seed=settings.induction_seed,
            started=started,
            weighed=True,
        )
        await report(progress, stage="store")
        persona = await self.personas.save(
            tenant, user, induced.text, induced.selection.exemplars, provenance
        )
        if pairs.new_since_refresh:
            await self.preferences.consume_since_refresh(tenant, user, pairs.new_since_refresh)
        return summary(persona, reused=False)

    async def induce_segment(
        self,
        tenant: str,
        segment: str,
        members: list[str],
        *,
        model: str | None = None,
        job_id: str | None = None,
        progress: Progress | None = None,
        budget: CallBudget | None = None,
    ) -> dict[str, Any]:
        """The pipeline over a segment's members' pooled pairs, at most `segment_pairs_per_member`
        of each (a seeded sample, so no member dominates), stored as a new version of the segment's
        persona line. The provenance names the members and their pairs. No exemplars are stored:
        they would show one member's conversations to every other member."""
        settings = self.settings
        model = model or settings.induction_model
        started = time.perf_counter()
        line = keys.segment_line(tenant, segment)
        done = made_by(await self.personas.line_versions(line), job_id) if job_id is not None else None
        if done is not None:
            return summary(done, reused=True)
        rng = random.Random(f"{settings.induction_seed}:{segment}")
        pooled: list[PreferencePair] = []
        by_member: dict[str, list[str]] = {}
        for member in sorted(members):
            pairs = time_order(await self.preferences.pairs(tenant, member))
            if len(pairs) > settings.segment_pairs_per_member:
                chosen = sorted(rng.sample(range(len(pairs)), settings.segment_pairs_per_member))
                pairs = [pairs[i] for i in chosen]
            if pairs:
                by_member[member] = [p.stable_id() for p in pairs]
                pooled += pairs
        plan = plan_for(pooled, settings, f"segment:{segment}")
        ctx = llm_context(self.upstreams, settings, model, budget or new_budget(settings))
        try:
            induced = await run_steps(ctx, plan, settings, progress=progress)
        finally:
            await self.quotas.record_job(tenant, ctx.usage.calls, ctx.usage.total_tokens)
        provenance = induced_provenance(
            SEGMENT_INDUCTION,
            scope={
                "segment": segment,
                "members": by_member,
                "pairs_per_member_cap": settings.segment_pairs_per_member,
            },
            ctx=ctx,
            job_id=job_id,
            plan=plan,
            induced=induced,
            seed=settings.induction_seed,
            started=started,
            exemplars=False,
        )
        await report(progress, stage="store")
        persona = await self.personas.save_line(line, induced.text, [], provenance)
        return summary(persona, reused=False)


@dataclass
class Induced:
    """What steps 2-4 produce for one user, before anything is stored."""

    text: str
    kept: list[Trace]
    selection: Selection


async def run_steps(
    ctx: LLMContext, plan: Plan, settings: Settings, *, progress: Progress | None = None
) -> Induced:
    """Bootstrap, synthesise and select in memory (no store): the pure part of `induce`.

    Raises BudgetExceeded when `ctx.budget` cannot afford the plan, NotEnoughData (code
    `no_consistent_traces`) when no trace agrees with the user, LLMOutputError or UpstreamError.
    """
    budget = ctx.budget
    if plan.minimum_calls > budget.max_calls:
        raise BudgetExceeded(
            f"a refresh for {len(plan.train) + len(plan.validation)} pairs needs at least "
            f"{plan.minimum_calls} LLM calls, more than the budget of {budget.max_calls}; "
            "nothing was changed"
        )
    await report(progress, stage="split", train=len(plan.train), validation=len(plan.validation))

    traces = await bootstrap(ctx, plan.train, seed=settings.induction_seed, progress=progress)
    kept = [t for t in traces if t.kept]
    if not kept:
        raise NotEnoughData(
            "not enough data: no reasoning trace agreed with the user's own choices, so no persona "
            "could be grounded; nothing was changed",
            code="no_consistent_traces",
        )
    await report(progress, stage="synthesize", kept=len(kept), traces=len(traces))
    text = await synthesize(ctx, kept, max_chars=settings.persona_max_chars)

    selection = await select_exemplars(
        ctx,
        text,
        [t.pair for t in kept],
        plan.validation,
        max_size=settings.exemplars_max,
        sets=settings.induction_exemplar_sets,
        seed=settings.induction_seed,
        progress=progress,
    )
    return Induced(text=text, kept=kept, selection=selection)


def summary(persona: Persona, *, reused: bool) -> dict[str, Any]:
    prov = persona.provenance
    return {
        "status": "complete",
        "version": persona.version,
        "version_id": persona.version_id,
        "persona_chars": len(persona.text),
        "exemplars": len(persona.exemplars),
        "kept_traces": len(prov.get("kept_trace_ids", [])),
        "train_pairs": len(prov.get("train_ids", [])),
        "validation_pairs": len(prov.get("validation_ids", [])),
        "implicit_pairs": prov.get("implicit_pairs", 0),
        "validation_accuracy": prov.get("validation_accuracy"),
        "model": prov.get("model"),
        "cost": prov.get("cost"),
        "reused": reused,
    }
