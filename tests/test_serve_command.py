"""`persona serve` on a fresh machine: with no Redis reachable it starts a local one, with
persistence under the data folder, says so, and serves."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.fake_upstream import FakeUpstream
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_serve_starts_a_local_redis_when_none_is_reachable(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    redis_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "PERSONA_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "PERSONA_DATA_DIR": str(tmp_path / "data"),
        "PERSONA_UPSTREAM_API_BASE": fake_upstream.base_url,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "middleware", "serve", "--port", str(http_port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert ready is not None and ready.json() == {"status": "ok", "redis": "up"}
        # Development default: no app keys -> one tenant; the chat goes through.
        chat = httpx.post(
            f"http://127.0.0.1:{http_port}/v1/chat/completions",
            json={"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]},
        )
        assert chat.json()["choices"][0]["message"]["content"] == "fake answer to: hello"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    assert f"No Redis at redis://127.0.0.1:{redis_port}/0: started a local redis-server" in output
    redis_dir = tmp_path / "data" / "redis"
    assert any(redis_dir.glob("appendonly*")), list(redis_dir.iterdir())
    with socket.socket() as s:  # the local redis-server was stopped with the proxy
        assert s.connect_ex(("127.0.0.1", redis_port)) != 0
