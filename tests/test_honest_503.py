"""A write that timed out on a stalled Redis says it may or may not be stored, and its retry with the
same idempotency key stores it exactly once (Redis runs the queued command when it resumes):
preferences, persona versions, comparisons and evaluation trials."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import httpx
import orjson
import redis

from middleware.store import keys
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import RunningProxy, admin_client, app_client, proxy_settings, start_proxy
from tests.support.redis_server import RedisServer
from tests.support.stored import stored_records

WRITES = 8
EXEMPLAR = {
    "context": [{"role": "user", "content": "How do I sort a list?"}],
    "chosen": {"role": "assistant", "content": "sorted(xs)"},
    "rejected": {"role": "assistant", "content": "There are many ways..."},
}


def feedback(i: int) -> dict[str, Any]:
    return {
        "user": "alice",
        "context": [{"role": "user", "content": f"question {i}"}],
        "chosen": {"role": "assistant", "content": f"good answer {i}"},
        "rejected": {"role": "assistant", "content": f"bad answer {i}"},
    }


def test_timed_out_writes_are_honest_and_retries_store_each_once(
    fresh_redis: RedisServer, fake_upstream: FakeUpstream
) -> None:
    settings = proxy_settings(fresh_redis.url, fake_upstream, redis_socket_timeout_s=0.5)
    with start_proxy(settings) as proxy, app_client(proxy) as client:
        assert client.post("/v1/preferences", json=feedback(-1)).status_code == 201

        def write(i: int) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = client.post("/v1/preferences", json=feedback(i), headers={"Idempotency-Key": f"write-{i}"})
            return response, time.monotonic() - started

        with fresh_redis.while_paused(), ThreadPoolExecutor(WRITES) as pool:
            stalled = list(pool.map(write, range(WRITES)))
        for response, seconds in stalled:
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "store_unavailable"
            assert "may or may not have been stored" in error["message"] and "Idempotency-Key" in error["message"]
            assert seconds < 2.0
        retried = [write(i)[0] for i in range(WRITES)]
        assert all(r.status_code in (200, 201) for r in retried), [r.text for r in retried]
        # Some stalled writes were applied when Redis resumed: their retry finds them (200), the rest store (201).
        print("stored by the stalled write:", sum(r.status_code == 200 for r in retried), "of", WRITES)

    records = stored_records(fresh_redis.url, "tenant-a", "alice")
    contents = [p["chosen"]["content"] for p in records]
    assert sorted(contents) == sorted(f"good answer {i}" for i in range(-1, WRITES))  # each exactly once
    ids = [r.json()["data"][0]["id"] for r in retried]
    assert len(set(ids)) == WRITES and all(ids.count(i) == 1 for i in ids)


def test_a_persona_put_retried_after_a_503_adds_one_version(
    fresh_redis: RedisServer, fake_upstream: FakeUpstream
) -> None:
    settings = proxy_settings(fresh_redis.url, fake_upstream, redis_socket_timeout_s=0.5)
    body = {"text": "Prefers short answers.", "exemplars": [EXEMPLAR]}
    with start_proxy(settings) as proxy, admin_client(proxy) as admin:
        assert admin.put("/admin/users/alice/persona", json={"text": "first"}).json()["version"] == 1
        with fresh_redis.while_paused():
            stalled = admin.put("/admin/users/alice/persona", json=body)
        assert stalled.status_code == 503 and "may or may not" in stalled.json()["error"]["message"]
        retried = admin.put("/admin/users/alice/persona", json=body)
        again = admin.put("/admin/users/alice/persona", json=body)  # as if the first retry had timed out
        versions = admin.get("/admin/users/alice/persona/versions").json()
    assert retried.status_code == again.status_code == 200
    assert retried.json()["version"] == again.json()["version"] == 2
    assert [v["version"] for v in versions] == [1, 2]


def stalling_responder(redis_server: RedisServer) -> Callable[[dict[str, Any]], str]:
    """Answers every call; the first one also stalls Redis (SIGSTOP), so the write that follows the
    upstream calls is the one that times out."""
    stalled = threading.Event()

    def respond(body: dict[str, Any]) -> str:
        if not stalled.is_set():
            stalled.set()
            redis_server.pause()
        return "an answer"

    return respond


def comparison_ids(redis_url: str, tenant: str, user: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        found = client.scan_iter(match=keys.comparison(tenant, user, "cmp_*"))
        return sorted(k.decode().rsplit(":", 1)[1] for k in found if k.decode().count(":") == 4)
    finally:
        client.close()


def listed_trials(redis_url: str, tenant: str, run_id: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        listed = cast(list[bytes], client.lrange(keys.evaluation_trials(tenant, run_id), 0, -1))
        ids = [i.decode() for i in listed]
        assert all(client.hexists(keys.evaluation_trial(tenant, run_id, i), "data") for i in ids)
        return ids
    finally:
        client.close()


def assert_honest_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "store_unavailable" and "may or may not have been stored" in error["message"]


def test_stalled_comparisons_and_trials_are_stored_once_after_retries_with_their_keys(
    fresh_redis: RedisServer, fake_upstream: FakeUpstream
) -> None:
    settings = proxy_settings(fresh_redis.url, fake_upstream, redis_socket_timeout_s=0.5)
    comparison = {"user": "alice", "model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
    with start_proxy(settings) as proxy, app_client(proxy) as client, admin_client(proxy) as admin:
        for user in ("alice", "bob"):
            put = admin.put(f"/admin/users/{user}/persona", json={"text": f"{user} likes haiku"})
            assert put.status_code == 200
        run = admin.post("/admin/evaluations", json={"users": ["alice", "bob"], "model": "fake-model"})
        run_id = run.json()["id"]

        def create(i: int) -> httpx.Response:
            return client.post("/v1/comparisons", json=comparison, headers={"Idempotency-Key": f"cmp-{i}"})

        def trial(i: int) -> httpx.Response:
            body = {
                "user": "alice",
                "messages": [{"role": "user", "content": f"Hi {i}"}],
                "idempotency_key": f"t-{i}",
            }
            return client.post(f"/v1/evaluations/{run_id}/trials", json=body)

        for call in (create, trial):
            fake_upstream.responder = stalling_responder(fresh_redis)
            try:
                with ThreadPoolExecutor(4) as pool:
                    stalled = list(pool.map(call, range(4)))
            finally:
                fresh_redis.resume()
            for response in stalled:
                assert_honest_503(response)

        fake_upstream.responder = None
        before = len(fake_upstream.requests)
        created = [create(i) for i in range(4)]
        # A comparison its stalled write stored is found by the retry: no new upstream calls for it.
        replayed = 4 - (len(fake_upstream.requests) - before) // 4
        print("comparisons stored by the stalled write:", replayed, "of 4")
        assert all(r.status_code == 200 for r in created), [r.text for r in created]
        upstream_calls = len(fake_upstream.requests)
        again = [create(i) for i in range(4)]  # as if the first retries had timed out too
        assert [r.json() for r in again] == [r.json() for r in created]
        trials = [trial(i) for i in range(4)]
        assert all(r.status_code in (200, 201) for r in trials), [r.text for r in trials]
        trial_calls = len(fake_upstream.requests)
        assert [trial(i).json()["id"] for i in range(4)] == [t.json()["id"] for t in trials]
        assert len(fake_upstream.requests) == trial_calls  # a replay makes no upstream call
    assert upstream_calls > 0
    # Each creation is stored exactly once, under the id its key gives.
    assert comparison_ids(fresh_redis.url, "tenant-a", "alice") == sorted(r.json()["id"] for r in created)
    assert len({r.json()["id"] for r in created}) == 4
    # and each counts once against the user's pending comparisons (max_pending_comparisons)
    with redis.Redis.from_url(fresh_redis.url) as client:
        pending = cast(list[bytes], client.zrange(keys.pending_comparisons("tenant-a", "alice"), 0, -1))
    assert sorted(p.decode() for p in pending) == sorted(r.json()["id"] for r in created)
    trial_ids = sorted(t.json()["id"] for t in trials)
    assert sorted(listed_trials(fresh_redis.url, "tenant-a", run_id)) == trial_ids


def test_an_idempotency_key_names_one_creation(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    body = {"user": "alice", "model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
    with app_client(proxy) as client:
        first = client.post("/v1/comparisons", json={**body, "idempotency_key": "k1"})
        assert first.status_code == 200, first.text
        calls = len(fake_upstream.requests)
        streamed = client.post("/v1/comparisons", json={**body, "stream": True}, headers={"Idempotency-Key": "k1"})
        lines = [orjson.loads(line) for line in streamed.text.splitlines()]
        assert [line["type"] for line in lines] == ["comparison", "candidate", "candidate", "candidate", "candidate", "done"]
        assert lines[-1]["comparison"] == first.json() and len(fake_upstream.requests) == calls
        other = client.post("/v1/comparisons", json={**body, "max_tokens": 5}, headers={"Idempotency-Key": "k1"})
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
        # the same key of another user is another creation
        bob = client.post("/v1/comparisons", json={**body, "user": "bob"}, headers={"Idempotency-Key": "k1"})
        assert bob.status_code == 200 and bob.json()["id"] != first.json()["id"]
        judged = client.post(f"/v1/comparisons/{first.json()['id']}/judgement", json={"best": 0, "worst": 1})
        assert judged.status_code == 201, judged.text
        late = client.post("/v1/comparisons", json=body, headers={"Idempotency-Key": "k1"})
        assert late.status_code == 409 and late.json()["error"]["code"] == "already_judged"
        too_long = client.post("/v1/comparisons", json=body, headers={"Idempotency-Key": "k" * 257})
        assert too_long.status_code == 400
