"""The drop-in surface: what the official SDK sees and what the upstream receives."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.metrics import sample
from tests.support.proxy import APP_KEY_A, RunningProxy

PERSONA = {
    "text": "Prefers short, concrete answers with one example.",
    "exemplars": [
        {
            "context": [{"role": "user", "content": "How do I sort a list?"}],
            "chosen": {"role": "assistant", "content": "sorted(xs)"},
            "rejected": {"role": "assistant", "content": "There are many ways to think about sorting..."},
        }
    ],
}


def give_persona(proxy: RunningProxy, user: str, tenant: str = "tenant-a", text: str | None = None) -> dict[str, Any]:
    body = dict(PERSONA, text=text or PERSONA["text"])
    response = httpx.put(f"{proxy.url}/admin/users/{user}/persona", json=body, headers=proxy.admin_headers(tenant))
    assert response.status_code == 200, response.text
    persona: dict[str, Any] = response.json()
    return persona


def client(proxy: RunningProxy, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0, **kwargs)


def persona_blocks(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "system" and "<user_preferences>" in m["content"]]


def test_persona_is_placed_after_the_app_system_prompt(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "alice")
    app_messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You are the ACME assistant."},
        {"role": "user", "content": "hello"},
    ]
    raw = client(proxy).chat.completions.with_raw_response.create(model="fake-model", messages=app_messages, user="alice")
    completion = raw.parse()

    sent = fake_upstream.chat_requests[-1].body["messages"]
    assert sent[0] == app_messages[0]
    assert "Prefers short, concrete answers" in sent[1]["content"]
    assert sent[1]["content"].startswith("<user_preferences>") and sent[1]["content"].endswith("</user_preferences>")
    assert "sorted(xs)" in sent[1]["content"]
    assert sent[2:] == app_messages[1:]
    assert raw.headers["x-persona-version"] == "1"
    # The header is the overhead the metric recorded for this one call (ms vs s, 3 decimals).
    overhead_ms = float(raw.headers["x-persona-overhead-ms"])
    assert sample(proxy.url, "persona_overhead_seconds_count") == 1.0
    assert sample(proxy.url, "persona_overhead_seconds_sum") * 1000.0 == pytest.approx(overhead_ms, abs=0.001)
    assert sample(proxy.url, "persona_chat_requests_total", mode="inject", outcome="ok") == 1.0
    assert completion.choices[0].message.content == "fake answer to: hello"


def test_without_persona_the_request_goes_upstream_unchanged(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "user": "nobody-yet",
        "temperature": 0.3,
        "seed": 7,
        "logit_bias": {"50256": -100},
        "vendor_extension": {"nested": [1, 2, {"x": None}]},
    }
    response = httpx.post(f"{proxy.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {APP_KEY_A}"})
    assert response.status_code == 200
    assert response.headers["x-persona-version"] == "none"
    assert fake_upstream.chat_requests[-1].body == body


def test_unknown_fields_pass_through_with_a_persona(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "alice")
    extra = {"seed": 3, "vendor_extension": {"a": [1, "two"]}, "metadata": {"trace": "t-1"}}
    client(proxy).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "x"}], user="alice", extra_body=extra
    )
    received = fake_upstream.chat_requests[-1].body
    for key, value in extra.items():
        assert received[key] == value
    assert received["user"] == "alice"


def test_mode_off_disables_personalization(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "alice")
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="fake-model", messages=messages, user="alice", extra_headers={"X-Persona-Mode": "off"}
    )
    assert raw.headers["x-persona-version"] == "none"
    assert fake_upstream.chat_requests[-1].body["messages"] == messages


@pytest.mark.parametrize(
    ("where", "extra_headers", "extra_body"),
    [
        ("header", {"X-Persona-User": "alice"}, {"user": "bob"}),
        ("user", {}, {"user": "alice", "safety_identifier": "bob"}),
        ("safety_identifier", {}, {"safety_identifier": "alice", "metadata": {"user_id": "bob"}}),
        ("metadata", {}, {"metadata": {"user_id": "alice"}}),
    ],
)
def test_end_user_id_sources_in_order(
    proxy: RunningProxy,
    fake_upstream: FakeUpstream,
    where: str,
    extra_headers: dict[str, str],
    extra_body: dict[str, Any],
) -> None:
    give_persona(proxy, "alice", text="ALICE-PERSONA")
    give_persona(proxy, "bob", text="BOB-PERSONA")
    client(proxy).chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "q"}],
        extra_headers=extra_headers,
        extra_body=extra_body,
    )
    blocks = persona_blocks(fake_upstream.chat_requests[-1].body["messages"])
    assert len(blocks) == 1 and "ALICE-PERSONA" in blocks[0], where


def test_invalid_user_id_is_a_400(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(proxy).chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "q"}], user="bad\x01id"
        )
    assert err.value.body["code"] == "invalid_user_id"  # type: ignore[index]
    assert fake_upstream.chat_requests == []


def test_n_choices(proxy: RunningProxy) -> None:
    completion = client(proxy).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "q"}], n=3
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]


def test_streaming_is_framed_exactly_as_upstream_sends_it(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "alice")
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "tell me three words"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "alice",
    }
    headers = {"Authorization": f"Bearer {APP_KEY_A}"}
    with httpx.stream("POST", f"{proxy.v1}/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-persona-version"] == "1"
        raw = b"".join(response.iter_bytes())
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    payloads = [json.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    assert all(e.startswith(b"data: ") for e in events[:-1])
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["total_tokens"] > 0
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p["choices"])
    assert text == "fake answer to: tell me three words"


def test_streaming_through_the_sdk(proxy: RunningProxy) -> None:
    stream = client(proxy).chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "abc def"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "fake answer to: abc def"


TOOLS: list[ChatCompletionFunctionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def test_tools_and_tool_choice(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]))
    completion = client(proxy).chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=TOOLS,
        tool_choice="auto",
    )
    assert completion.choices[0].message.tool_calls is not None
    call = completion.choices[0].message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    received = fake_upstream.chat_requests[-1].body
    assert received["tools"] == TOOLS and received["tool_choice"] == "auto"


def test_streamed_tool_call_deltas(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]))
    stream = client(proxy).chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "weather?"}],
        tools=TOOLS,
        stream=True,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                name += delta.function.name or "" if delta.function else ""
                arguments += delta.function.arguments or "" if delta.function else ""
            finish = choice.finish_reason or finish
    assert name == "get_weather" and json.loads(arguments) == {"city": "Oslo"} and finish == "tool_calls"


def test_response_format_json_schema(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
        "required": ["answer", "score"],
        "additionalProperties": False,
    }
    fake_upstream.responder = lambda body: {"answer": "yes", "score": 4}
    completion = client(proxy).chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "q"}],
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}},
    )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": "yes", "score": 4}
    assert fake_upstream.chat_requests[-1].body["response_format"]["json_schema"]["schema"] == schema


def test_models_are_listed(redis_url: str, fake_upstream: FakeUpstream) -> None:
    from tests.support.proxy import proxy_settings, start_proxy

    running = start_proxy(proxy_settings(redis_url, fake_upstream, model_aliases={"smart": "fake-model-large"}))
    try:
        models = client(running).models.list()
        assert "smart" in [m.id for m in models.data]
        client(running).chat.completions.create(model="smart", messages=[{"role": "user", "content": "q"}])
        assert fake_upstream.chat_requests[-1].body["model"] == "fake-model-large"
    finally:
        running.server.stop()


def test_upstream_receives_the_proxy_key_not_the_app_key(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    client(proxy).chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "q"}])
    assert fake_upstream.chat_requests[-1].headers["authorization"] == "Bearer sk-upstream-secret"
