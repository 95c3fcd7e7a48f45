"""POST /v1/preferences: single and batch feedback, idempotency, tenancy, fail-closed writes."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import APP_KEY_B, RunningProxy, proxy_settings, start_proxy
from tests.support.proxy import app_client as client
from tests.support.redis_server import RedisServer
from tests.support.stored import stored_records as stored


def feedback(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "user": "alice",
        "context": [{"role": "user", "content": f"question {i}"}],
        "chosen": {"role": "assistant", "content": f"good answer {i}"},
        "rejected": {"role": "assistant", "content": f"bad answer {i}"},
        **extra,
    }


def test_single_feedback_is_stored_once(proxy: RunningProxy) -> None:
    with client(proxy) as c:
        first = c.post("/v1/preferences", json=feedback(rationale="more concrete"))
        assert first.status_code == 201, first.text
        assert first.json()["created"] == 1
        again = c.post("/v1/preferences", json=feedback(rationale="more concrete"))
        assert again.status_code == 200 and again.json()["duplicates"] == 1
        assert again.json()["data"][0]["id"] == first.json()["data"][0]["id"]
    [pair] = stored(proxy.settings.redis_url, "tenant-a", "alice")
    assert pair["chosen"]["content"] == "good answer 0"
    assert pair["rationale"] == "more concrete" and pair["source"] == "feedback"


def test_batch_across_users_with_idempotency_keys(proxy: RunningProxy) -> None:
    items = [feedback(i, idempotency_key=f"k{i}") for i in range(3)] + [feedback(9, user="bob")]
    with client(proxy) as c:
        resp = c.post("/v1/preferences", json=items)
        assert resp.status_code == 201 and resp.json()["created"] == 4
        assert [d["user"] for d in resp.json()["data"]] == ["alice"] * 3 + ["bob"]
        # The same keys with other content: the key decides, nothing new is stored.
        changed = [feedback(i + 100, idempotency_key=f"k{i}") for i in range(3)]
        assert c.post("/v1/preferences", json=changed).json()["created"] == 0
    assert len(stored(proxy.settings.redis_url, "tenant-a", "alice")) == 3
    assert len(stored(proxy.settings.redis_url, "tenant-a", "bob")) == 1


def test_idempotency_key_header_and_user_header(proxy: RunningProxy) -> None:
    body = feedback()
    del body["user"]
    with client(proxy) as c:
        headers = {"Idempotency-Key": "req-1", "X-Persona-User": "carol"}
        assert c.post("/v1/preferences", json=body, headers=headers).json()["created"] == 1
        body["rationale"] = "retried with a change"
        assert c.post("/v1/preferences", json=body, headers=headers).json()["created"] == 0
        assert c.post("/v1/preferences", json=body).status_code == 400  # no user at all
    assert len(stored(proxy.settings.redis_url, "tenant-a", "carol")) == 1


def test_tenants_are_kept_apart(proxy: RunningProxy) -> None:
    with client(proxy) as a, client(proxy, APP_KEY_B) as b:
        assert a.post("/v1/preferences", json=feedback()).json()["created"] == 1
        assert b.post("/v1/preferences", json=feedback()).json()["created"] == 1
    assert len(stored(proxy.settings.redis_url, "tenant-a", "alice")) == 1
    assert len(stored(proxy.settings.redis_url, "tenant-b", "alice")) == 1


def test_invalid_feedback_is_rejected(proxy: RunningProxy) -> None:
    with client(proxy) as c:
        same = feedback()
        same["rejected"] = same["chosen"]
        assert c.post("/v1/preferences", json=same).status_code == 422
        assert c.post("/v1/preferences", json=[]).status_code == 422
        assert c.post("/v1/preferences", json={**feedback(), "context": []}).status_code == 422
        assert c.post("/v1/preferences", json={**feedback(), "user": "a\x01b"}).status_code == 400
        assert c.post("/v1/preferences", json={**feedback(), "api_key": "x"}).status_code == 422
        assert c.post("/v1/preferences", content=b"{nope").status_code in (400, 422)
        assert httpx.post(f"{proxy.url}/v1/preferences", json=feedback()).status_code == 401
    assert stored(proxy.settings.redis_url, "tenant-a", "alice") == []


def test_writes_fail_closed_when_redis_is_down(fresh_redis: RedisServer, fake_upstream: FakeUpstream) -> None:
    running = start_proxy(proxy_settings(fresh_redis.url, fake_upstream, redis_socket_timeout_s=0.3))
    try:
        with client(running) as c:
            assert c.post("/v1/preferences", json=feedback(1)).status_code == 201
            fresh_redis.kill()
            down = c.post("/v1/preferences", json=feedback(2))
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "store_unavailable"
            fresh_redis.restart()
            assert c.post("/v1/preferences", json=feedback(2)).status_code == 201
        # (this Redis keeps no data across a kill): the write after the restart is there
        assert [p["chosen"]["content"] for p in stored(fresh_redis.url, "tenant-a", "alice")] == [
            "good answer 2"
        ]
    finally:
        running.server.stop()
