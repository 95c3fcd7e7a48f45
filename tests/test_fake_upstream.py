"""The test doubles themselves: the fake OpenAI-compatible upstream and the private redis-server."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
import redis
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam
from pydantic import BaseModel, Field

from tests.support.fake_upstream import FakeUpstream, Reply, schema_instance
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "what is the capital of France?"},
]
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def client_for(fake: FakeUpstream, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0, **kwargs)  # type: ignore[arg-type]


# -- plain completions ---------------------------------------------------------------------------


def test_plain_completion_has_openai_shape_and_records_request(fake_upstream: FakeUpstream) -> None:
    with client_for(fake_upstream) as client:
        resp = client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "fake-model"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "fake answer to: what is the capital of France?"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    [rec] = fake_upstream.requests
    assert rec.path == "/v1/chat/completions"
    assert rec.method == "POST"
    assert rec.headers["authorization"] == "Bearer sk-test"
    assert rec.body["messages"] == MESSAGES
    assert rec.completed and not rec.aborted


def test_n_choices(fake_upstream: FakeUpstream) -> None:
    with client_for(fake_upstream) as client:
        resp = client.chat.completions.create(model="m", messages=MESSAGES, n=3)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    contents = [c.message.content for c in resp.choices]
    assert len(set(contents)) == 3
    assert all(c and c.startswith("fake answer to:") for c in contents)


def test_script_then_responder_then_default(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content="first"), Reply(content="second"))
    with client_for(fake_upstream) as client:

        def ask() -> str | None:
            resp = client.chat.completions.create(model="m", messages=MESSAGES)
            return resp.choices[0].message.content

        assert ask() == "first"
        assert ask() == "second"
        fake_upstream.responder = lambda body: f"echo {len(body['messages'])}"
        assert ask() == "echo 2"
        fake_upstream.responder = lambda body: None
        assert ask() == "fake answer to: what is the capital of France?"


def test_models_endpoint(fake_upstream: FakeUpstream) -> None:
    with client_for(fake_upstream) as client:
        ids = [m.id for m in client.models.list()]
    assert "fake-model" in ids


# -- streaming ------------------------------------------------------------------------------------


def test_stream_raw_sse_framing_with_usage(fake_upstream: FakeUpstream) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    raw = httpx.post(f"{fake_upstream.base_url}/chat/completions", json=body, timeout=5).content
    assert raw.endswith(b"data: [DONE]\n\n")
    events = raw.split(b"\n\n")
    assert events[-1] == b""
    events = events[:-1]
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events)
    chunks = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "fake answer to: what is the capital of France?"
    content_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content_chunks) > 3
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0


def test_stream_through_sdk(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content="one two three four", chunk_delay=0.01))
    with client_for(fake_upstream) as client:
        stream = client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three four"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_fail_mid_stream_drops_connection(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content="a b c d e f g h", fail_mid_stream=True))
    with client_for(fake_upstream) as client:
        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        got: list[str] = []
        with pytest.raises((httpx.HTTPError, openai.APIError)):
            for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
    assert 0 < len("".join(got)) < len("a b c d e f g h")


# -- structured output and tools --------------------------------------------------------------------


class Address(BaseModel):
    city: str = Field(min_length=10)
    zip_code: int = Field(ge=1000, le=9999)


class Person(BaseModel):
    name: str
    age: int = Field(gt=17, lt=130)
    score: float = Field(ge=0.25, le=1.0)
    tags: list[str] = Field(min_length=2)
    kind: Literal["admin", "user"]
    home: Address
    nickname: str | None
    active: bool


def test_json_schema_output_is_valid(fake_upstream: FakeUpstream) -> None:
    schema = Person.model_json_schema()
    with client_for(fake_upstream) as client:
        resp = client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        )
    data = json.loads(resp.choices[0].message.content or "")
    jsonschema.validate(data, schema)
    Person.model_validate(data)


def test_json_schema_uses_responder_dict(fake_upstream: FakeUpstream) -> None:
    fake_upstream.responder = lambda body: {"answer": 42}
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
    }
    with client_for(fake_upstream) as client:
        resp = client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        )
    assert json.loads(resp.choices[0].message.content or "") == {"answer": 42}


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "string"}, "minItems": 3, "uniqueItems": True},
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/x"}], "$defs": {"x": {"enum": ["a", "b"]}}},
        {"type": "string", "format": "date-time"},
        {"type": "integer", "minimum": 3, "multipleOf": 5},
    ],
)
def test_schema_instance_edge_cases(schema: dict[str, object]) -> None:
    jsonschema.validate(schema_instance(schema), schema)


def test_tool_calls_plain(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(tool_calls=[{"name": "get_weather", "arguments": '{"city": "Paris"}'}]))
    with client_for(fake_upstream) as client:
        resp = client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            tools=[WEATHER_TOOL],
        )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.type == "function"  # (narrows the union of tool call types)
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_tool_calls_streamed(fake_upstream: FakeUpstream) -> None:
    args = {"city": "Paris, the capital of France"}
    fake_upstream.script(Reply(tool_calls=[{"name": "get_weather", "arguments": args}]))
    with client_for(fake_upstream) as client:
        stream = client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            tools=[WEATHER_TOOL],
            stream=True,
        )
        chunks = [c for c in stream if c.choices]
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    head = deltas[0]
    assert head.id and head.id.startswith("call_") and head.type == "function"
    assert head.function is not None and head.function.name == "get_weather"
    assert head.function.arguments == ""
    assert len(deltas) > 2
    assert all(d.id is None for d in deltas[1:])
    joined = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(joined) == args
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# -- errors and aborts -------------------------------------------------------------------------------


def test_injected_429_is_rate_limit_error(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(status=429, error_message="slow down"))
    with client_for(fake_upstream) as client, pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == 429
    body = info.value.body
    assert isinstance(body, dict) and body["message"] == "slow down" and body["param"] is None
    # the next call falls back to the default answer: exactly two upstream calls in all
    with client_for(fake_upstream) as client:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert len(fake_upstream.chat_requests) == 2


def test_error_body_shape_raw(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(status=503))
    r = httpx.post(f"{fake_upstream.base_url}/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert r.status_code == 503
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_abort_during_delay_is_seen(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content="late", delay=2.0))
    with client_for(fake_upstream, timeout=0.3) as client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=MESSAGES)
    gave_up = time.monotonic()
    [rec] = fake_upstream.requests
    assert fake_upstream.wait_for(lambda: rec.aborted, timeout=1.0)
    assert rec.aborted_at is not None and rec.aborted_at - gave_up < 1.0
    assert not rec.completed


async def test_abort_mid_stream_is_seen(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content=" ".join(["word"] * 50), chunk_delay=0.1))
    async with openai.AsyncOpenAI(base_url=fake_upstream.base_url, api_key="k", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
        )
        async for _ in stream:
            break
        await stream.close()
    closed = time.monotonic()
    [rec] = fake_upstream.requests
    assert await fake_upstream.await_for(lambda: rec.aborted, timeout=1.0)
    assert rec.aborted_at is not None and rec.aborted_at - closed < 1.0


# -- RedisServer ------------------------------------------------------------------------------------


def test_redis_url_fixture_is_private_and_flushed(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    r = redis.Redis.from_url(redis_url)
    assert r.dbsize() == 0
    r.set("k", "v")
    assert r.get("k") == b"v"
    r.close()


def test_redis_pause_resume_and_kill(fresh_redis: RedisServer) -> None:
    r = redis.Redis.from_url(fresh_redis.url, socket_timeout=0.3)
    r.set("a", 1)
    fresh_redis.pause()
    with pytest.raises(redis.exceptions.TimeoutError):
        r.get("a")
    fresh_redis.resume()
    r2 = redis.Redis.from_url(fresh_redis.url, socket_timeout=2)
    assert r2.get("a") == b"1"
    fresh_redis.kill()
    assert not fresh_redis.running
    with pytest.raises(redis.exceptions.ConnectionError):
        r2.get("a")
    r.close()
    r2.close()


def test_redis_while_paused_resumes_however_the_block_ends(fresh_redis: RedisServer) -> None:
    r = redis.Redis.from_url(fresh_redis.url, socket_timeout=0.3)
    r.set("a", 1)
    with pytest.raises(redis.exceptions.TimeoutError), fresh_redis.while_paused():
        assert fresh_redis.paused
        r.get("a")
    assert not fresh_redis.paused
    r2 = redis.Redis.from_url(fresh_redis.url, socket_timeout=2)
    assert r2.get("a") == b"1"
    r.close()
    r2.close()


def aof_holds(server: RedisServer, client: redis.Redis, needle: bytes) -> bool:
    """Redis has nothing left to write or fsync, and its append-only files hold `needle`."""
    info: dict[str, Any] = client.info("persistence")  # type: ignore[assignment]
    if info["aof_buffer_length"] or info["aof_pending_bio_fsync"]:
        return False
    return any(needle in path.read_bytes() for path in server.dir.rglob("*.aof"))


def test_redis_restart_replays_aof_after_kill_9(redis_factory) -> None:  # type: ignore[no-untyped-def]
    server: RedisServer = redis_factory(appendonly=True)
    port = server.port
    r = redis.Redis.from_url(server.url)
    r.mset({f"key:{i}": i for i in range(500)})
    # Wait for the write to reach the append-only file (not for a fixed second of `everysec`).
    assert wait_until(lambda: aof_holds(server, r, b"key:499"), timeout=10), "the AOF never got the write"
    server.kill()
    server.restart()
    assert server.port == port
    r2 = redis.Redis.from_url(server.url)
    assert r2.dbsize() == 500
    assert r2.get("key:499") == b"499"
    r.close()
    r2.close()


def test_isolated_fake_upstream_is_separate(
    isolated_fake_upstream: FakeUpstream, fake_upstream: FakeUpstream
) -> None:
    assert isolated_fake_upstream.port != fake_upstream.port
    with client_for(isolated_fake_upstream) as client:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert len(isolated_fake_upstream.requests) == 1 and fake_upstream.requests == []


def test_the_responses_api_waits_its_delay_before_the_headers(fake_upstream: FakeUpstream) -> None:
    """As on chat completions: the time-to-first-byte benchmarks delay both APIs alike."""
    fake_upstream.script(Reply(content="late", delay=0.3), Reply(content="at once"))
    timings = []
    for _ in range(2):
        started = time.monotonic()
        with httpx.stream(
            "POST", f"{fake_upstream.base_url}/responses", json={"model": "m", "input": "q", "stream": True}
        ) as r:
            assert r.status_code == 200
            timings.append(time.monotonic() - started)
            assert b"response.completed" in r.read()
    assert timings[0] >= 0.3 > timings[1]
