"""Job records tell the truth: a job failed by a transient upstream error is retried and the retry's
success clears the earlier error, a cancelled adapter training stays cancelled and stores nothing,
and a cancel is recognised by the exception's type."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_result

from middleware.induction import jobs
from middleware.induction.adapters import ModelHolder
from middleware.induction.queue import REFRESH, JobCancelled, JobQueue
from middleware.store import keys
from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import drain, job_settings, store_services
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import RunningProxy
from tests.support.proxy import admin_client as client

T, U = "tenant-a", "alice"


async def test_a_transient_upstream_error_is_retried_and_the_success_clears_it(
    jproxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    async with store_services(jproxy.settings) as services:
        await services.preferences.add_pairs(T, U, make_pairs(U, 5))
    # one attempt's worth of 503s (the upstream call is tried 3 times)
    fake_upstream.responder = InductionResponder().after_503s(3)
    with client(jproxy) as http:
        job_id = http.post(f"/admin/users/{U}/persona/refresh").json()["job_id"]
        await drain(jproxy.settings.model_copy(update={"induction_concurrency": 1}))
        job = http.get(f"/admin/jobs/{job_id}").json()
    assert job["state"] == "complete" and job["attempts"] == 2
    assert job["error"] is None, job


async def test_a_cancelled_adapter_training_stops_and_stores_no_adapter(
    jproxy: RunningProxy, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    started, release, ended = threading.Event(), threading.Event(), threading.Event()

    class SlowModel:
        """A training that runs until released or told to stop, looking between its steps (the real
        one is minutes of CPU on a big history; tests/test_lora_service.py cancels a real one)."""

        def train_user(self, user: str, pairs: list[Any], *, stop: Callable[[], bool], **_: Any) -> bytes:
            started.set()
            try:
                while not release.wait(0.01):
                    if stop():
                        raise RuntimeError("stopped between steps")
                return b"an adapter that must never be stored"
            finally:
                ended.set()

    async def model(_: ModelHolder) -> SlowModel:
        return SlowModel()

    monkeypatch.setattr(ModelHolder, "get", model)
    monkeypatch.setattr(jobs, "adapter_wanted", lambda services, asked=False: None)
    async with store_services(jproxy.settings) as services:
        await services.preferences.add_pairs(T, U, make_pairs(U, 5))
    try:
        with client(jproxy) as http:
            assert http.put(f"/admin/users/{U}/persona", json={"text": "Likes short answers."}).status_code == 200
            async with store_services(jproxy.settings) as services:  # as the admin route queues it
                job_id, _ = await JobQueue(jproxy.settings, services.redis).enqueue_adapter_training(T, U)
            worker = asyncio.create_task(drain(jproxy.settings))
            assert await asyncio.to_thread(started.wait, 20)
            await asyncio.to_thread(http.post, f"/admin/jobs/{job_id}/cancel")
            cancelled_at = time.monotonic()
            await asyncio.wait_for(worker, 10)  # the job returns once the training thread has stopped
            assert ended.is_set() and not release.is_set() and time.monotonic() - cancelled_at < 5
            job = http.get(f"/admin/jobs/{job_id}").json()
            assert job["state"] == "failed" and job["error"]["code"] == "cancelled", job
            assert http.get(f"/admin/users/{U}/adapter").status_code == 404
    finally:
        release.set()
    async with store_services(jproxy.settings) as services:
        assert await services.redis.exists(keys.adapter(T, U, 1)) == 0
        assert (await JobQueue(jproxy.settings, services.redis).get(job_id) or {})["state"] == "failed"


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        (asyncio.CancelledError(), "cancelled"),
        (JobCancelled(), "cancelled"),
        (RuntimeError("a CancelledError was mentioned, nothing was cancelled"), "job_failed"),
    ],
)
async def test_a_cancel_is_recognised_by_type_not_by_text(
    redis_url: str, fake_upstream: FakeUpstream, outcome: BaseException, code: str
) -> None:
    settings = job_settings(redis_url, fake_upstream)
    async with store_services(settings) as services:
        queue = JobQueue(settings, services.redis)
        job_id, _ = await queue.enqueue_refresh(T, U)
        # How an arq worker leaves a job that ended with `outcome`: off the queue, with a result.
        await services.redis.zrem(keys.JOB_QUEUE, job_id)
        await services.redis.delete(job_key_prefix + job_id)
        result = serialize_result(REFRESH, (), {}, 1, 0, False, outcome, 0, 1, job_id, keys.JOB_QUEUE, job_id)
        assert result is not None
        await services.redis.set(result_key_prefix + job_id, result)
        record = await queue.get(job_id)
    assert record is not None and record["state"] == "failed" and record["error"]["code"] == code


async def test_progress_writes_are_throttled_and_every_stage_end_is_kept(
    redis_url: str, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of progress events makes few writes into the job's record: the first event of each
    stage and each completed count, else at most one every `PROGRESS_EVERY_S` (on a clock the test
    moves); the record ends with the burst's last event."""
    settings = job_settings(redis_url, fake_upstream)
    async with store_services(settings) as services:
        queue = JobQueue(settings, services.redis)
        job_id, _ = await queue.enqueue_refresh(T, U)
        written: list[dict[str, Any]] = []
        real_update = queue.update

        async def counted_update(job: str, **fields: Any) -> None:
            if "progress" in fields:
                written.append(fields["progress"])
            await real_update(job, **fields)

        monkeypatch.setattr(queue, "update", counted_update)
        now = [100.0]
        progress = jobs.progress_reporter(queue, job_id, clock=lambda: now[0])

        for done in range(1, 101):  # a burst within one interval: its first and its completed count
            await progress({"stage": "bootstrap", "done": done, "total": 100})
        assert [(e["stage"], e["done"]) for e in written] == [("bootstrap", 1), ("bootstrap", 100)]

        await progress({"stage": "synthesize", "kept": 7})  # a new stage: written at once
        assert jobs.PROGRESS_EVERY_S == 0.2
        for done in range(1, 51):  # a burst over 0.54 s, an event every 11 ms
            now[0] = 101.0 + (done - 1) * 0.011
            await progress({"stage": "select", "done": done, "total": 50})
        assert [(e["stage"], e.get("done")) for e in written[2:]] == [
            ("synthesize", None),
            ("select", 1),
            ("select", 20),  # 0.209 s after the last write
            ("select", 39),
            ("select", 50),  # the count completed
        ]
        record = await queue.record(job_id)
        assert record is not None and record["progress"] == {"stage": "select", "done": 50, "total": 50}

        await queue.cancel(job_id)  # a stopped job: no more writes, and the run is told to stop
        with pytest.raises(JobCancelled):
            await progress({"stage": "store"})
        quiet = jobs.progress_reporter(queue, job_id, cancels=False)
        await quiet({"stage": "adapter", "done": 1, "total": 3})
    assert len(written) == 7
