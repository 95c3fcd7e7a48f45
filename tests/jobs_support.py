"""Helpers for job tests: a proxy with fast job settings (fixture ``jproxy``), and an in-process arq worker run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from middleware.config import Settings
from middleware.induction.jobs import build_worker
from middleware.services import Services, build_services
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import RunningProxy, proxy_settings, start_proxy

FAST_JOBS: dict[str, Any] = {
    "induction_model": "fake-judge",
    "jobs_retry_defer_s": 0.2,
    "worker_poll_s": 0.05,
    "jobs_timeout_s": 20.0,
    "jobs_in_progress_grace_s": 1.0,
}


def job_settings(redis_url: str, upstream: FakeUpstream, **overrides: Any) -> Settings:
    return proxy_settings(redis_url, upstream, **{**FAST_JOBS, **overrides})


@pytest.fixture
async def jproxy(redis_url: str, fake_upstream: FakeUpstream) -> AsyncIterator[RunningProxy]:
    """The proxy with fast job settings (its worker runs only when a test drains the queue)."""
    with start_proxy(job_settings(redis_url, fake_upstream)) as running:
        yield running


async def drain(settings: Settings) -> Any:
    """Run a worker in this event loop until the queue is empty (arq burst mode)."""
    worker = build_worker(settings, burst=True, handle_signals=False)
    try:
        await worker.async_run()
    finally:
        await worker.close()
    return worker


@asynccontextmanager
async def store_services(settings: Settings) -> AsyncIterator[Services]:
    """The stores behind `settings`, for a test to write what it needs (closed afterwards)."""
    services = build_services(settings)
    try:
        yield services
    finally:
        await services.close()
