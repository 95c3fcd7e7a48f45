"""A write that timed out on a stalled Redis says it may or may not be stored, and its retry with the
same idempotency key stores it exactly once (Redis runs the queued command when it resumes)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import admin_client, app_client, proxy_settings, start_proxy
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

        fresh_redis.pause()
        try:
            with ThreadPoolExecutor(WRITES) as pool:
                stalled = list(pool.map(write, range(WRITES)))
        finally:
            fresh_redis.resume()
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
        fresh_redis.pause()
        try:
            stalled = admin.put("/admin/users/alice/persona", json=body)
        finally:
            fresh_redis.resume()
        assert stalled.status_code == 503 and "may or may not" in stalled.json()["error"]["message"]
        retried = admin.put("/admin/users/alice/persona", json=body)
        again = admin.put("/admin/users/alice/persona", json=body)  # as if the first retry had timed out
        versions = admin.get("/admin/users/alice/persona/versions").json()
    assert retried.status_code == again.status_code == 200
    assert retried.json()["version"] == again.json()["version"] == 2
    assert [v["version"] for v in versions] == [1, 2]
