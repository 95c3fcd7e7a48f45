"""Per-context personas in the refresh job, after the general persona (README "Contexts").

The user's pairs are grouped by context (`personalize.contexts.group_pairs`: by tag, else by
clustering the prompts); each group with at least `PERSONA_CONTEXT_MIN_PAIRS` pairs runs the same
SynthesizeMe steps as the general persona, with a budget of its own, and stores a new version on its
own line (`ContextStore.save`). Then the router's centroids are rebuilt from the groups. One context
failing (too few consistent traces, budget, upstream) leaves that context as it was and is reported.
A retried job (same job id) keeps the context versions an earlier try stored and induces only the rest.
"""

from __future__ import annotations

import time
from typing import Any

from middleware.errors import PersonaError
from middleware.induction.context import Progress, report
from middleware.induction.pipeline import (
    Induction,
    Plan,
    llm_context,
    new_budget,
    run_steps,
    split,
    time_order,
)
from middleware.induction.provenance import INDUCTION, induced_provenance, made_by
from middleware.models import Persona, PreferencePair
from middleware.personalize.contexts import Group, build_router, group_pairs, prompt_text


async def induce_contexts(
    induction: Induction,
    tenant: str,
    user: str,
    *,
    pairs: list[PreferencePair] | None = None,
    model: str | None = None,
    job_id: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Induce a persona for each of the user's contexts with enough pairs; store them and the
    router. `pairs`: the user's pairs as the refresh read them (`Induction.read_pairs`), else read
    here. Returns {"contexts": {name: summary}, "router": {...}}."""
    settings, contexts = induction.settings, induction.contexts
    model = model or settings.induction_model
    if pairs is None:
        pairs = await induction.preferences.pairs(tenant, user)
    groups = group_pairs(
        time_order(pairs),
        min_pairs=settings.context_min_pairs,
        max_contexts=settings.context_max,
        min_margin=settings.context_cluster_margin,
    )
    results: dict[str, Any] = {}
    for group in groups:
        await report(progress, stage="context", context=group.name, pairs=len(group.pairs))
        if job_id is not None:
            done = made_by(await contexts.versions(tenant, user, group.name), job_id)
            if done is not None:  # stored by an earlier try of this job
                results[group.name] = context_summary(group, done, reused=True)
                continue
        plan = Plan(*split(group.pairs, settings.induction_validation_fraction))
        started = time.perf_counter()
        ctx = llm_context(induction.upstreams, settings, model, new_budget(settings))
        try:
            induced = await run_steps(ctx, plan, settings, progress=progress)
        except PersonaError as exc:
            results[group.name] = {"status": "failed", "pairs": len(group.pairs), "error": exc.code}
            continue
        finally:
            await induction.quotas.record_job(tenant, ctx.usage.calls, ctx.usage.total_tokens)
        provenance = induced_provenance(
            INDUCTION,
            scope={"grouping": group.grouping},
            ctx=ctx,
            job_id=job_id,
            plan=plan,
            induced=induced,
            seed=settings.induction_seed,
            started=started,
        )
        persona = await contexts.save(
            tenant, user, group.name, induced.text, induced.selection.exemplars, provenance
        )
        results[group.name] = context_summary(group, persona, reused=False)
    stored = set(await contexts.names(tenant, user))  # one read, not one per group
    routed = {
        g.name: (g.grouping, [prompt_text(p) for p in g.pairs])
        for g in groups
        if results[g.name]["status"] == "complete" or g.name in stored
    }
    router = build_router(routed)
    await contexts.set_router(tenant, user, router.model_dump_json().encode())
    return {
        "contexts": results,
        "router": {"router_id": router.router_id, "contexts": sorted(routed)},
    }


def context_summary(group: Group, persona: Persona, *, reused: bool) -> dict[str, Any]:
    return {
        "status": "complete",
        "version": persona.version,
        "version_id": persona.version_id,
        "grouping": group.grouping,
        "pairs": len(group.pairs),
        "validation_accuracy": persona.provenance.get("validation_accuracy"),
        "reused": reused,
    }
