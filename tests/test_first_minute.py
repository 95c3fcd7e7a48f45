"""A newcomer's first minute: `persona serve` says which Redis and which upstream it uses, and with no
upstream configured it says what to set; a chat call then answers a clear 503 naming those settings
(not a provider library's error), which the official client does not retry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.ports import free_port
from tests.support.proxy import APP_KEY_A, proxy_settings, start_proxy

ROOT = Path(__file__).resolve().parents[1]


def without_upstream_settings(env: dict[str, str]) -> dict[str, str]:
    """The environment minus every upstream setting and provider key litellm could use."""
    return {
        name: value
        for name, value in env.items()
        if not name.startswith("PERSONA_UPSTREAM_") and not name.endswith(("_API_KEY", "_API_BASE"))
    }


@contextmanager
def serving(env: dict[str, str], http_port: int) -> Iterator[list[str]]:
    """A real `persona serve` process, up once /healthz answers; yields a list that holds its whole
    output once it has stopped (SIGINT on the way out)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "middleware", "serve", "--port", str(http_port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield output
    finally:
        process.send_signal(signal.SIGINT)
        output.append(process.communicate(timeout=30)[0])


@pytest.mark.slow
def test_serve_without_upstream_says_what_to_set_and_chat_answers_503(tmp_path: Path) -> None:
    redis_port, http_port = free_port(), free_port()
    redis_url = f"redis://:topsecret@127.0.0.1:{redis_port}/0"  # nothing listens: Redis is not needed here
    env = {
        **without_upstream_settings(dict(os.environ)),
        "PERSONA_REDIS_URL": redis_url,
        "PERSONA_EMBEDDED_REDIS": "false",
        "PERSONA_DATA_DIR": str(tmp_path / "data"),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    with serving(env, http_port) as logged:
        requests: list[httpx.Request] = []
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{http_port}/v1",
            api_key="unused",
            timeout=120,
            http_client=httpx.Client(event_hooks={"request": [requests.append]}),
        )
        with pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    output = logged[0]

    error = raised.value
    assert error.status_code == 503, output
    assert isinstance(error.body, dict) and error.body["code"] == "upstream_not_configured"
    assert "PERSONA_UPSTREAM_API_BASE" in error.body["message"]
    assert "PERSONA_UPSTREAM_API_KEY" in error.body["message"]
    assert "OPENAI_API_KEY" in error.body["message"]  # what litellm looked for, for this model
    assert "Missing credentials" not in error.body["message"]
    assert len(requests) == 1  # x-should-retry: false, so the official client did not retry
    # The start-up lines: the Redis URL without its password, and what to set for the upstream.
    assert f"Redis: redis://:***@127.0.0.1:{redis_port}/0" in output
    assert "topsecret" not in output
    assert "No upstream LLM configured: set PERSONA_UPSTREAM_API_BASE" in output


def test_serve_says_which_upstream_it_uses(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    http_port = free_port()
    env = {
        **without_upstream_settings(dict(os.environ)),
        "PERSONA_REDIS_URL": "redis://127.0.0.1:1/0",
        "PERSONA_EMBEDDED_REDIS": "false",
        "PERSONA_UPSTREAM_API_BASE": fake_upstream.base_url,
        "PERSONA_UPSTREAM_API_KEY": "sk-upstream-secret",
        "PERSONA_MODEL_ALIASES": '{"house-model": "fake-model"}',
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    with serving(env, http_port) as logged:
        pass
    output = logged[0]
    assert "Redis: redis://127.0.0.1:1/0" in output
    assert (
        f"Upstream: {fake_upstream.base_url} (auto, with PERSONA_UPSTREAM_API_KEY); "
        "model aliases: house-model -> fake-model"
    ) in output
    assert "sk-upstream-secret" not in output
    assert "No upstream LLM configured" not in output


@pytest.mark.parametrize(
    ("model", "looked_for"),
    [("gpt-4o-mini", "; litellm looked for OPENAI_API_KEY"), ("house-model", "")],
)
def test_chat_without_upstream_names_the_missing_settings(
    redis_url: str, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, model: str, looked_for: str
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = proxy_settings(redis_url, fake_upstream, upstream_api_base=None, upstream_api_key="")
    with start_proxy(settings) as proxy:
        response = httpx.post(
            f"{proxy.v1}/chat/completions",
            headers={"Authorization": f"Bearer {APP_KEY_A}"},
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True},
            timeout=120,
        )
    assert response.status_code == 503
    assert response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["type"] == "service_unavailable" and error["code"] == "upstream_not_configured"
    assert error["param"] == "model"
    assert error["message"].startswith(f"no upstream LLM is configured for model {model!r}: set ")
    assert error["message"].endswith(looked_for or "models named anthropic/...)")
    assert fake_upstream.requests == []
