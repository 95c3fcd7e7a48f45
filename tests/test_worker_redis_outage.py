"""A real `persona worker` outlives Redis: kill -9 and restart, then a 5 s SIGSTOP; jobs after each complete."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from arq.worker import Worker

from middleware.induction.jobs import build_worker
from middleware.induction.queue import JobQueue
from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import job_settings, store_services
from tests.support.fake_upstream import FakeUpstream
from tests.support.lifecycle import stop_process
from tests.support.processes import quick_worker_env, start_worker
from tests.support.redis_server import RedisServer
from tests.support.waiting import await_until

T = "tenant-a"


async def refresh(redis_url: str, upstream: FakeUpstream, user: str) -> dict[str, Any] | None:
    """Enqueue one refresh for a user with enough pairs and wait for the worker to finish it."""
    settings = job_settings(redis_url, upstream)
    async with store_services(settings) as services:
        await services.preferences.add_pairs(T, user, make_pairs(user, 5))
        job_id, _ = await JobQueue(settings, services.redis).enqueue_refresh(T, user)
        return await JobQueue(settings, services.redis).wait(job_id, timeout=30)


@pytest.mark.slow
async def test_worker_survives_a_redis_restart_and_a_pause(
    redis_factory: Callable[..., RedisServer], fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = redis_factory()
    fake_upstream.responder = InductionResponder()
    log = tmp_path / "worker.log"
    worker = start_worker(quick_worker_env(server.url, fake_upstream), log)

    def logged(text: str) -> int:
        return log.read_text(errors="replace").count(text)

    try:
        first = await refresh(server.url, fake_upstream, "before")
        assert first is not None and first["state"] == "complete", log.read_text()[-2000:]

        server.kill()
        assert await await_until(lambda: logged("Redis unreachable") >= 1, timeout=15), log.read_text()[-2000:]
        await asyncio.sleep(3)  # the outage lasts a few seconds
        assert worker.poll() is None, log.read_text()[-2000:]
        server.restart()
        after_restart = await refresh(server.url, fake_upstream, "after-restart")
        assert after_restart is not None and after_restart["state"] == "complete", log.read_text()[-2000:]
        assert logged("Redis reachable again") >= 1

        outages = logged("Redis unreachable")
        with server.while_paused():
            paused_at = time.monotonic()
            # Noticed once a command passes the socket timeout (later on a loaded machine).
            assert await await_until(lambda: logged("Redis unreachable") > outages, timeout=10), log.read_text()[-2000:]
            await asyncio.sleep(max(0.0, 5 - (time.monotonic() - paused_at)))  # a pause of at least 5 s
        assert worker.poll() is None, log.read_text()[-2000:]
        after_pause = await refresh(server.url, fake_upstream, "after-pause")
        assert after_pause is not None and after_pause["state"] == "complete", log.read_text()[-2000:]
        assert logged("Redis reachable again") >= 2
        assert worker.poll() is None
    finally:
        stop_process(worker)


async def test_a_worker_asked_to_stop_while_redis_fails_stops(
    redis_url: str, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cancellation that arrives during a Redis read can come back as the client's own fault (its
    # read timeout): the worker must still stop, not take it for an outage and poll on.
    polling = asyncio.Event()
    turned: list[bool] = []

    async def poll_turning_cancel_into_timeout(self: Worker) -> None:
        polling.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if turned:  # only the first: a worker that missed it still stops when cancelled again
                raise
            turned.append(True)
            raise TimeoutError("Timeout reading from the queue's Redis") from None

    monkeypatch.setattr(Worker, "_poll_iteration", poll_turning_cancel_into_timeout)
    worker = build_worker(job_settings(redis_url, fake_upstream), handle_signals=False)
    running = asyncio.create_task(worker.async_run())
    try:
        await asyncio.wait_for(polling.wait(), 10)
        running.cancel()
        done, _ = await asyncio.wait({running}, timeout=5)
        assert done == {running} and running.cancelled()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
