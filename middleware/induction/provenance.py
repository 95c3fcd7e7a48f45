"""What a persona version records about how it was made (its `provenance`), built in one place for
every line (a user's general persona, a context's, a segment's): written by an operator, or induced by
the SynthesizeMe steps. `pipeline.summary`, the admin views and the exports read these fields."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from middleware.induction.bootstrap import Trace
from middleware.induction.context import PROMPT_VERSION, LLMContext
from middleware.induction.select import Selection
from middleware.models import Persona, PreferencePair

INDUCTION = "induction"
SEGMENT_INDUCTION = "segment-induction"
METHOD = "synthesizeme"


class Split(Protocol):
    """How a run's pairs were split (`pipeline.Plan`, which imports this module)."""

    train: list[PreferencePair]
    validation: list[PreferencePair]


class Outcome(Protocol):
    """What a run's steps kept and selected (`pipeline.Induced`)."""

    kept: list[Trace]
    selection: Selection


def admin_provenance() -> dict[str, Any]:
    """A version an operator wrote (a user's, a context's, a segment's or the tenant default's)."""
    return {"source": "admin"}


def made_by(versions: list[Persona], job_id: str) -> Persona | None:
    """The newest of `versions` that job `job_id` stored: how a retried job (same id) finds the work
    an earlier try already did (a crash after the save) and skips it. A run without a job id has no
    earlier try: its callers skip the read of the versions."""
    return next((v for v in reversed(versions) if v.provenance.get("job_id") == job_id), None)


def ids(pairs: list[PreferencePair]) -> list[str]:
    return [p.stable_id() for p in pairs]


def induced_provenance(
    source: str,
    *,
    ctx: LLMContext,
    scope: Mapping[str, Any] | None = None,
    job_id: str | None,
    plan: Split,
    induced: Outcome,
    seed: int,
    started: float,
    exemplars: bool = True,
    weighed: bool = False,
) -> dict[str, Any]:
    """An induced version: where its pairs came from (`scope`: a context's grouping, a segment's
    members), the model, how the pairs were split (`plan`), the traces kept and the validation accuracy
    (`induced`), and the run's cost (`ctx`: the run's LLM calls; `started`: `time.perf_counter()` when
    the run began).

    `exemplars`: the version stores exemplars (a segment's stores none). `weighed`: it also records
    how many pairs were implied by feedback and every candidate exemplar set's score."""
    pairs = plan.train + plan.validation
    selection = induced.selection
    return {
        "source": source,
        "method": METHOD,
        **(scope or {}),
        "job_id": job_id,
        "model": ctx.model,
        "prompt_template_version": PROMPT_VERSION,
        "source_preference_ids": ids(pairs),
        "train_ids": ids(plan.train),
        "validation_ids": ids(plan.validation),
        # pairs implied by feedback signals (weighted below explicit judgements, README "Feedback")
        **({"implicit_pairs": sum(1 for p in pairs if p.source == "implicit")} if weighed else {}),
        "kept_trace_ids": [t.pair.stable_id() for t in induced.kept],
        **({"exemplar_ids": ids(selection.exemplars)} if exemplars else {}),
        "validation_accuracy": selection.accuracy,
        **({"candidate_scores": selection.scores} if weighed else {}),
        "seed": seed,
        "cost": {**ctx.usage.as_dict(), "wall_s": round(time.perf_counter() - started, 3)},
    }
