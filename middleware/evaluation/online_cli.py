"""`persona report EVAL_ID`: the report of an online evaluation run, read straight from Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from middleware.config import Settings
from middleware.errors import NotFound
from middleware.evaluation.online_plot import write_png
from middleware.evaluation.online_service import build_report
from middleware.store.connection import redis_client
from middleware.store.evaluations import EvaluationStore


async def run_report(
    settings: Settings,
    *,
    tenant: str,
    evaluation_id: str,
    out: Path | None = None,
    plot: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the report; write it as JSON to `out` and the chart as PNG to `plot` when given."""
    async with redis_client(settings) as redis:
        store = EvaluationStore(redis)
        run = await store.run(tenant, evaluation_id)
        if run is None:
            raise NotFound(f"evaluation {evaluation_id!r} not found in tenant {tenant!r}")
        report = build_report(run, await store.trials(tenant, evaluation_id), seed=seed)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        report["written_to"] = str(out)
    if plot is not None:
        report["plot"] = str(write_png(report, plot))
    return report
