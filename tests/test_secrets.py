"""Keys never leak: not into logs, error bodies, metrics or what the upstream receives."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import ADMIN_KEY, APP_KEY_A, RunningProxy

UPSTREAM_KEY = "sk-upstream-secret"


def test_keys_never_reach_logs_errors_or_metrics(
    proxy: RunningProxy, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-" + APP_KEY_A[::-1]
    bodies = []
    with httpx.Client(base_url=proxy.url, timeout=10) as http:
        chat = {"model": "fake-model", "messages": [{"role": "user", "content": "q"}], "user": "alice"}
        bodies.append(
            http.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {wrong}"}).text
        )
        bodies.append(
            http.get("/admin/users/alice/persona", headers={"Authorization": f"Bearer {APP_KEY_A}"}).text
        )
        fake_upstream.script(*[Reply(status=500, error_message="upstream exploded")] * 5)
        bodies.append(
            http.post(
                "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {APP_KEY_A}"}
            ).text
        )
        bodies.append(
            http.put(
                "/admin/users/alice/persona",
                json={"text": ""},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            ).text
        )
        bodies.append(http.get("/metrics").text)
    assert len(fake_upstream.chat_requests) >= 1
    for secret in (APP_KEY_A, wrong, ADMIN_KEY, UPSTREAM_KEY):
        assert secret not in caplog.text
        assert all(secret not in body for body in bodies)
    for request in fake_upstream.chat_requests:
        assert APP_KEY_A not in str(request.headers) and APP_KEY_A not in str(request.body)
