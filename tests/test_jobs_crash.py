"""A `persona worker` killed (SIGKILL) mid-job loses nothing: after a restart the job completes once."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from middleware.induction.queue import JobQueue
from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import job_settings, store_services
from tests.support.fake_upstream import FakeUpstream
from tests.support.lifecycle import stop_process
from tests.support.processes import quick_worker_env, start_worker

T, U = "tenant-a", "alice"


@pytest.mark.slow
async def test_worker_killed_mid_job_completes_after_restart(
    redis_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = job_settings(redis_url, fake_upstream)
    fake_upstream.responder = InductionResponder().slowed(0.1)
    env = quick_worker_env(redis_url, fake_upstream)
    log = tmp_path / "worker.log"
    worker: subprocess.Popen[str] | None = None
    restarted: subprocess.Popen[str] | None = None
    async with store_services(settings) as services:
        queue = JobQueue(settings, services.redis)
        try:
            await services.preferences.add_pairs(T, U, make_pairs(U, 5))
            job_id, _ = await queue.enqueue_refresh(T, U)
            worker = start_worker(env, log)
            assert await fake_upstream.await_for(lambda: len(fake_upstream.chat_requests) >= 2, timeout=20)
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=5)
            killed_at = time.monotonic()
            record = await queue.get(job_id)
            assert record is not None and record["state"] == "running"
            assert await services.personas.get(T, U) is None

            restarted = start_worker(env, log)
            record = await queue.wait(job_id, timeout=30)
            assert record is not None and record["state"] == "complete", log.read_text()[-3000:]
            assert record["attempts"] == 2
            assert time.monotonic() - killed_at < 30
            versions = await services.personas.list_versions(T, U)
            assert [v.version for v in versions] == [1]
            assert versions[0].provenance["job_id"] == job_id
        finally:
            for process in (worker, restarted):
                if process is not None:
                    stop_process(process)
