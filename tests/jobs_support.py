"""Helpers for job tests: a proxy with fast job settings, and an in-process arq worker run."""

from __future__ import annotations

from typing import Any

from middleware.config import Settings
from middleware.induction.jobs import build_worker
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import proxy_settings

FAST_JOBS: dict[str, Any] = {
    "induction_model": "fake-judge",
    "jobs_retry_defer_s": 0.2,
    "worker_poll_s": 0.05,
    "jobs_timeout_s": 20.0,
    "jobs_in_progress_grace_s": 1.0,
}


def job_settings(redis_url: str, upstream: FakeUpstream, **overrides: Any) -> Settings:
    return proxy_settings(redis_url, upstream, **{**FAST_JOBS, **overrides})


async def drain(settings: Settings) -> Any:
    """Run a worker in this event loop until the queue is empty (arq burst mode)."""
    worker = build_worker(settings, burst=True, handle_signals=False)
    try:
        await worker.async_run()
    finally:
        await worker.close()
    return worker
