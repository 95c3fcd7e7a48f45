"""With the recommended Redis settings, a kill -9 loses at most about one second of acknowledged writes."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import redis

from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import APP_KEY_A, proxy_settings, start_proxy
from tests.support.redis_server import RedisServer


def test_kill_9_loses_at_most_the_last_second_of_writes(
    redis_factory: Callable[..., RedisServer], fake_upstream: FakeUpstream
) -> None:
    server = redis_factory(appendonly=True)  # appendonly yes, appendfsync everysec
    running = start_proxy(proxy_settings(server.url, fake_upstream))
    acknowledged: list[tuple[str, float]] = []
    try:
        with httpx.Client(headers={"Authorization": f"Bearer {APP_KEY_A}"}) as http:
            deadline = time.monotonic() + 2.5
            n = 0
            while time.monotonic() < deadline:
                n += 1
                body = {
                    "user": "durable",
                    "context": [{"role": "user", "content": f"question {n}"}],
                    "chosen": {"role": "assistant", "content": "good"},
                    "rejected": {"role": "assistant", "content": "bad"},
                }
                response = http.post(f"{running.v1}/preferences", json=body)
                assert response.status_code == 201
                acknowledged.append((response.json()["data"][0]["id"], time.monotonic()))
        server.kill()
        killed_at = time.monotonic()
    finally:
        running.server.stop()

    server.restart()
    client = redis.Redis.from_url(server.url)
    try:
        stored = {fields[b"id"].decode() for _, fields in client.xrange("pm:{tenant-a:durable}:prefs")}
    finally:
        client.close()
    missing = [(record_id, killed_at - at) for record_id, at in acknowledged if record_id not in stored]
    assert len(acknowledged) > 50
    # everysec: only writes acknowledged in the last ~1 s (plus scheduling slack) may be gone
    assert all(age < 1.5 for _, age in missing), missing[:3]
    assert len(stored) >= len([a for a in acknowledged if killed_at - a[1] >= 1.5])
