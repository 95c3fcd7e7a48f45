"""Faults: upstream errors and timeouts, clients that go away, Redis killed or frozen mid-run."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import APP_KEY_A, RunningProxy, proxy_settings, start_proxy
from tests.support.redis_server import RedisServer

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "q"}]
AUTH = {"Authorization": f"Bearer {APP_KEY_A}", "Content-Type": "application/json"}


def sdk(proxy: RunningProxy, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0, **kwargs)


def test_429_then_200_is_exactly_two_upstream_calls(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(status=429, error_message="slow down"))
    completion = sdk(proxy).chat.completions.create(model="fake-model", messages=MESSAGES)
    assert completion.choices[0].message.content == "fake answer to: q"
    assert len(fake_upstream.chat_requests) == 2


def test_streaming_retries_before_the_first_byte(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(status=503))
    stream = sdk(proxy).chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "fake answer to: q"
    assert len(fake_upstream.chat_requests) == 2


def test_persistent_5xx_becomes_502_after_bounded_attempts(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(*[Reply(status=500, error_message="boom")] * 5)
    with pytest.raises(openai.InternalServerError) as err:
        sdk(proxy).chat.completions.create(model="fake-model", messages=MESSAGES)
    assert err.value.status_code == 502
    assert len(fake_upstream.chat_requests) == proxy.settings.upstream_max_attempts


def test_upstream_4xx_is_returned_as_is_without_retry(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(status=404, error_message="model 'nope' does not exist", error_type="invalid_request_error"))
    with pytest.raises(openai.NotFoundError) as err:
        sdk(proxy).chat.completions.create(model="nope", messages=MESSAGES)
    assert "does not exist" in str(err.value)
    assert len(fake_upstream.chat_requests) == 1


def test_first_token_timeout_is_504(redis_url: str, fake_upstream: FakeUpstream) -> None:
    running = start_proxy(proxy_settings(redis_url, fake_upstream, upstream_first_token_timeout_s=0.3))
    try:
        fake_upstream.script(Reply(delay=5.0))
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            sdk(running).chat.completions.create(model="fake-model", messages=MESSAGES)
        assert err.value.status_code == 504
        assert time.monotonic() - started < 3.0  # gave up at the first-token timeout, not the reply
    finally:
        running.server.stop()


def test_unreachable_upstream_is_502(redis_url: str, fake_upstream: FakeUpstream) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    settings = proxy_settings(redis_url, fake_upstream, upstream_api_base=f"http://127.0.0.1:{dead_port}/v1")
    running = start_proxy(settings)
    try:
        with pytest.raises(openai.InternalServerError) as err:
            sdk(running).chat.completions.create(model="fake-model", messages=MESSAGES)
        assert err.value.status_code == 502
    finally:
        running.server.stop()


def test_failure_mid_stream_is_sent_as_an_error_event(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content="one two three four five six", fail_mid_stream=True))
    body = {"model": "fake-model", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{proxy.v1}/chat/completions", json=body, headers=AUTH) as response:
        raw = b"".join(response.iter_bytes())
    events = [e for e in raw.split(b"\n\n") if e]
    last = orjson.loads(events[-1].removeprefix(b"data: "))
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert b"data: [DONE]" not in raw


def _assert_abort_seen(fake_upstream: FakeUpstream, gone_at: float) -> None:
    assert fake_upstream.wait_for(lambda: any(r.aborted for r in fake_upstream.chat_requests), timeout=3.0)
    aborted = next(r for r in fake_upstream.chat_requests if r.aborted)
    assert aborted.aborted_at is not None and aborted.aborted_at - gone_at < 1.0


def test_client_disconnect_cancels_a_non_streaming_call(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(delay=5.0))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proxy.v1}/chat/completions", json={"model": "m", "messages": MESSAGES}, headers=AUTH, timeout=1.0)
    _assert_abort_seen(fake_upstream, time.monotonic())


def test_client_disconnect_before_the_first_token_cancels_a_stream(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(Reply(delay=5.0))
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proxy.v1}/chat/completions", json=body, headers=AUTH, timeout=1.0)
    _assert_abort_seen(fake_upstream, time.monotonic())


def test_client_disconnect_mid_stream_cancels_the_upstream(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content=" ".join(["word"] * 40), chunk_delay=0.1))
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{proxy.v1}/chat/completions", json=body, headers=AUTH) as response:
        chunks = response.iter_bytes()
        next(chunks)
        next(chunks)
    gone_at = time.monotonic()
    _assert_abort_seen(fake_upstream, gone_at)
    assert not fake_upstream.chat_requests[-1].completed


async def _load(proxy: RunningProxy, n: int, concurrency: int, during: Any = None) -> list[tuple[int, str]]:
    """n chat calls for user alice at the given concurrency; `during` runs after a quarter are done."""
    results: list[tuple[int, str]] = []
    done = 0
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=10) as http:

        async def one() -> None:
            nonlocal done
            async with semaphore:
                body = {"model": "m", "messages": MESSAGES, "user": "alice"}
                r = await http.post(f"{proxy.v1}/chat/completions", json=body, headers=AUTH)
                results.append((r.status_code, r.headers.get("x-persona-version", "")))
                done += 1
                if done == n // 4 and during is not None:
                    await asyncio.to_thread(during)

        await asyncio.gather(*(one() for _ in range(n)))
    return results


def _persona(proxy: RunningProxy) -> None:
    r = httpx.put(f"{proxy.url}/admin/users/alice/persona", json={"text": "likes cats"}, headers=proxy.admin_headers())
    assert r.status_code == 200


def _metric(proxy: RunningProxy, name: str) -> float:
    text = httpx.get(f"{proxy.url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "_total"))


def test_redis_killed_mid_run_chat_goes_on_without_persona(fresh_redis: RedisServer, fake_upstream: FakeUpstream) -> None:
    running = start_proxy(proxy_settings(fresh_redis.url, fake_upstream))
    try:
        _persona(running)
        results = asyncio.run(_load(running, 200, 16, during=fresh_redis.kill))
        assert [status for status, _ in results] == [200] * 200
        versions = [v for _, v in results]
        assert versions[0] == "1" and versions[-1] == "none"
        assert _metric(running, "persona_read_failures") >= 1
        assert httpx.get(f"{running.url}/readyz").status_code == 503
        fresh_redis.restart()
        assert httpx.get(f"{running.url}/readyz").status_code == 200
    finally:
        running.server.stop()


def test_redis_paused_mid_run_chat_stays_fast(fresh_redis: RedisServer, fake_upstream: FakeUpstream) -> None:
    running = start_proxy(proxy_settings(fresh_redis.url, fake_upstream))
    try:
        _persona(running)
        started = time.monotonic()
        results = asyncio.run(_load(running, 200, 16, during=fresh_redis.pause))
        elapsed = time.monotonic() - started
        assert [status for status, _ in results] == [200] * 200
        assert "none" in [v for _, v in results]
        assert elapsed < 10
        # Writes fail closed while Redis is frozen, and nothing is half-written.
        r = httpx.put(
            f"{running.url}/admin/users/alice/persona", json={"text": "new"}, headers=running.admin_headers(), timeout=10
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        fresh_redis.resume()
        # Once the read breaker lets reads through again, the persona is back (polled, not slept on).
        deadline = time.monotonic() + 10
        versions: list[str] = []
        while time.monotonic() < deadline:
            raw = sdk(running).chat.completions.with_raw_response.create(
                model="m", messages=MESSAGES, user="alice"
            )
            versions.append(raw.headers["x-persona-version"])
            if versions[-1] != "none":
                break
            time.sleep(0.05)
        assert versions[-1] == "1", versions
    finally:
        running.server.stop()
