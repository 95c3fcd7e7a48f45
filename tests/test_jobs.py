"""Persona refresh jobs: admin route -> arq queue -> worker -> stored version, with dedup and caps."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from middleware.induction.jobs import enqueue_due_refreshes
from middleware.models import PreferencePair
from middleware.store import keys
from middleware.store.preferences import PreferenceStore
from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import drain, job_settings, store_services
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import RunningProxy, start_proxy
from tests.support.proxy import admin_client as client

T, U = "tenant-a", "alice"


async def add_pairs(proxy: RunningProxy, user: str, n: int, tenant: str) -> None:
    async with store_services(proxy.settings) as services:
        await services.preferences.add_pairs(tenant, user, make_pairs(user, n))


async def test_refresh_runs_on_worker_and_reports_progress(
    jproxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    await add_pairs(jproxy, U, 6, T)
    fake_upstream.responder = InductionResponder()
    with client(jproxy) as http:
        created = http.post(f"/admin/users/{U}/persona/refresh")
        assert created.status_code == 202
        job_id = created.json()["job_id"]
        assert http.get(f"/admin/jobs/{job_id}").json()["state"] == "queued"
        await drain(jproxy.settings)
        job = http.get(f"/admin/jobs/{job_id}").json()
        assert job["state"] == "complete", job
        assert job["result"]["version"] == 1 and job["attempts"] == 1
        assert job["progress"]["stage"] in ("select", "store")
        persona = http.get(f"/admin/users/{U}/persona").json()
        assert persona["version"] == 1 and persona["provenance"]["job_id"] == job_id
        assert persona["provenance"]["model"] == "fake-judge"


async def test_a_refresh_reads_the_users_pairs_once(
    jproxy: RunningProxy, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The general persona and the context personas of one refresh learn from one read of the pairs."""
    await add_pairs(jproxy, U, 6, T)
    fake_upstream.responder = InductionResponder()
    reads: list[str] = []
    real_pairs = PreferenceStore.pairs

    async def counted(self: PreferenceStore, tenant: str, user: str) -> list[PreferencePair]:
        reads.append(user)
        return await real_pairs(self, tenant, user)

    with client(jproxy) as http:
        job_id = http.post(f"/admin/users/{U}/persona/refresh").json()["job_id"]
        monkeypatch.setattr(PreferenceStore, "pairs", counted)
        await drain(jproxy.settings)
        job = http.get(f"/admin/jobs/{job_id}").json()
    assert job["state"] == "complete", job
    assert job["result"]["train_pairs"] + job["result"]["validation_pairs"] == 6
    assert reads == [U]


async def test_refresh_is_deduplicated_per_user(jproxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    await add_pairs(jproxy, U, 5, T)
    await add_pairs(jproxy, "bob", 5, T)
    fake_upstream.responder = InductionResponder()
    with client(jproxy) as http:
        first = http.post(f"/admin/users/{U}/persona/refresh").json()
        second = http.post(f"/admin/users/{U}/persona/refresh", json={"model": "fake-model"}).json()
        other = http.post("/admin/users/bob/persona/refresh").json()
        assert second["job_id"] == first["job_id"] and second["deduplicated"] is True
        assert other["job_id"] != first["job_id"]
        await drain(jproxy.settings)
        assert http.get(f"/admin/jobs/{first['job_id']}").json()["state"] == "complete"
        versions = http.get(f"/admin/users/{U}/persona/versions").json()
        assert [v["version"] for v in versions] == [1]
        again = http.post(f"/admin/users/{U}/persona/refresh").json()
        assert again["job_id"] != first["job_id"] and again["deduplicated"] is False


async def test_not_enough_data_is_a_clear_status(jproxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    await add_pairs(jproxy, U, 4, T)
    with client(jproxy) as http:
        response = http.post(f"/admin/users/{U}/persona/refresh")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "not_enough_data"
    assert "at least 5" in response.json()["error"]["message"]
    assert fake_upstream.chat_requests == []


async def test_failed_job_keeps_current_persona(jproxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    await add_pairs(jproxy, U, 5, T)
    fake_upstream.responder = lambda body: Reply(content="not json at all")
    with client(jproxy) as http:
        put = http.put(f"/admin/users/{U}/persona", json={"text": "hand-written persona"})
        assert put.status_code == 200
        job_id = http.post(f"/admin/users/{U}/persona/refresh").json()["job_id"]
        await drain(jproxy.settings)
        job = http.get(f"/admin/jobs/{job_id}").json()
        assert job["state"] == "failed" and job["error"]["code"] == "malformed_llm_output"
        assert job["attempts"] == 1  # malformed output is not retried as a job
        current = http.get(f"/admin/users/{U}/persona").json()
        assert current["text"] == "hand-written persona" and current["version"] == 1


async def test_cancelled_job_never_changes_persona(jproxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    await add_pairs(jproxy, U, 5, T)
    fake_upstream.responder = InductionResponder()
    with client(jproxy) as http:
        http.put(f"/admin/users/{U}/persona", json={"text": "keep me"})
        job_id = http.post(f"/admin/users/{U}/persona/refresh").json()["job_id"]
        cancelled = http.post(f"/admin/jobs/{job_id}/cancel").json()
        assert cancelled["state"] == "failed" and cancelled["error"]["code"] == "cancelled"
        await drain(jproxy.settings)
        assert http.get(f"/admin/jobs/{job_id}").json()["state"] == "failed"
        assert http.get(f"/admin/users/{U}/persona").json()["text"] == "keep me"
    assert fake_upstream.chat_requests == []


async def test_running_job_cancelled_midway(jproxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    await add_pairs(jproxy, U, 8, T)
    fake_upstream.responder = InductionResponder().slowed(0.15)
    settings = jproxy.settings.model_copy(update={"induction_concurrency": 1})
    with client(jproxy) as http:
        http.put(f"/admin/users/{U}/persona", json={"text": "keep me"})
        job_id = http.post(f"/admin/users/{U}/persona/refresh").json()["job_id"]
        worker = asyncio.create_task(drain(settings))
        assert await fake_upstream.await_for(lambda: len(fake_upstream.chat_requests) >= 2, timeout=10)
        await asyncio.to_thread(http.post, f"/admin/jobs/{job_id}/cancel")
        await asyncio.wait_for(worker, 20)
        assert http.get(f"/admin/jobs/{job_id}").json()["error"]["code"] == "cancelled"
        assert http.get(f"/admin/users/{U}/persona").json()["text"] == "keep me"
        assert len(http.get(f"/admin/users/{U}/persona/versions").json()) == 1


async def test_user_lock_defers_a_second_run(
    jproxy: RunningProxy, fake_upstream: FakeUpstream, redis_url: str
) -> None:
    import redis.asyncio as aioredis

    await add_pairs(jproxy, U, 5, T)
    fake_upstream.responder = InductionResponder()
    r = aioredis.Redis.from_url(redis_url)
    # Another refresh of the same user holds the lock for 0.6 s; this one must wait, then run.
    locked_at = time.monotonic()
    await r.set(keys.job_lock(T, U), "another-job", px=600)
    with client(jproxy) as http:
        job_id = http.post(f"/admin/users/{U}/persona/refresh").json()["job_id"]
        await drain(jproxy.settings)
        job = http.get(f"/admin/jobs/{job_id}").json()
    # the fake upstream runs in this process: its receive times share time.monotonic() with us
    first_call = min(req.received_at for req in fake_upstream.chat_requests)
    assert job["state"] == "complete" and job["attempts"] == 1
    assert first_call >= locked_at + 0.59  # no LLM call while the other job held the lock
    await r.aclose()


async def test_tenant_concurrency_cap(redis_url: str, fake_upstream: FakeUpstream) -> None:
    proxy = start_proxy(job_settings(redis_url, fake_upstream, jobs_tenant_concurrency=1))
    try:
        users = ["u1", "u2", "u3"]
        for user in users:
            await add_pairs(proxy, user, 5, T)
        responder = InductionResponder()
        in_flight: dict[str, int] = {"now": 0, "max": 0}

        async def slow(body: dict[str, Any]) -> Reply:
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
            await asyncio.sleep(0.02)
            in_flight["now"] -= 1
            return Reply(json=responder(body))

        fake_upstream.responder = slow
        with client(proxy) as http:
            ids = [http.post(f"/admin/users/{u}/persona/refresh").json()["job_id"] for u in users]
            await drain(proxy.settings.model_copy(update={"induction_concurrency": 1}))
            states = [http.get(f"/admin/jobs/{i}").json()["state"] for i in ids]
        assert states == ["complete"] * 3
        # One tenant slot and one call at a time per job: never two upstream calls at once.
        assert in_flight["max"] == 1
    finally:
        proxy.server.stop()


async def test_auto_refresh_after_n_new_pairs(jproxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    settings = jproxy.settings.model_copy(update={"auto_refresh_after": 5})
    fake_upstream.responder = InductionResponder()
    async with store_services(settings) as services:
        queue = services.jobs

        async def due() -> int:
            return await enqueue_due_refreshes(settings, services.users, services.preferences, queue)

        await services.preferences.add_pairs(T, U, make_pairs(U, 4))
        assert await due() == 0
        await services.preferences.add_pairs(T, U, make_pairs(U, 6)[4:])
        assert await due() == 1
        assert await due() == 0  # already pending
        await drain(settings)
        assert (await services.personas.get(T, U)) is not None
        assert await services.preferences.pairs_since_refresh(T, U) == 0
        assert await due() == 0
