"""A `persona worker` killed (SIGKILL) mid-job loses nothing: after a restart the job completes once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from middleware.induction.queue import JobQueue
from middleware.services import build_services
from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import job_settings
from tests.support.fake_upstream import FakeUpstream, Reply

T, U = "tenant-a", "alice"
ROOT = Path(__file__).resolve().parent.parent


def start_worker(redis_url: str, upstream: FakeUpstream, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PERSONA_REDIS_URL": redis_url,
        "PERSONA_UPSTREAM_API_BASE": upstream.base_url,
        "PERSONA_INDUCTION_MODEL": "fake-judge",
        "PERSONA_INDUCTION_CONCURRENCY": "1",
        "PERSONA_JOBS_TIMEOUT_S": "4",
        "PERSONA_JOBS_IN_PROGRESS_GRACE_S": "0.5",
        "PERSONA_WORKER_POLL_S": "0.05",
        "PERSONA_JOBS_RETRY_DEFER_S": "0.2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "middleware", "worker"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
async def test_worker_killed_mid_job_completes_after_restart(
    redis_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = job_settings(redis_url, fake_upstream)
    services = build_services(settings)
    queue = JobQueue(settings, services.redis)
    responder = InductionResponder()
    fake_upstream.responder = lambda body: Reply(json=responder(body), delay=0.1)
    log = tmp_path / "worker.log"
    worker = restarted = None
    try:
        await services.preferences.add_pairs(T, U, make_pairs(U, 5))
        job_id, _ = await queue.enqueue_refresh(T, U)
        worker = start_worker(redis_url, fake_upstream, log)
        assert await fake_upstream.await_for(lambda: len(fake_upstream.chat_requests) >= 2, timeout=20)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=5)
        killed_at = time.monotonic()
        record = await queue.get(job_id)
        assert record is not None and record["state"] == "running"
        assert await services.personas.get(T, U) is None

        restarted = start_worker(redis_url, fake_upstream, log)
        record = await queue.wait(job_id, timeout=30)
        assert record is not None and record["state"] == "complete", log.read_text()[-3000:]
        assert record["attempts"] == 2
        assert time.monotonic() - killed_at < 30
        versions = await services.personas.list_versions(T, U)
        assert [v.version for v in versions] == [1]
        assert versions[0].provenance["job_id"] == job_id
    finally:
        for process in (worker, restarted):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        await services.close()
