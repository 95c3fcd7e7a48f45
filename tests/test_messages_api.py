"""POST /v1/messages (Anthropic Messages API) with the official anthropic SDK: passed through to an
Anthropic-compatible base, or translated by litellm to the OpenAI-compatible upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.support.dropin import PERSONA_MARK, give_persona
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import APP_KEY_A, RunningProxy, proxy_settings, start_proxy

CACHED_SYSTEM: Any = [
    {"type": "text", "text": "You are the ACME assistant.", "cache_control": {"type": "ephemeral"}},
]


@pytest.fixture
def anthropic_proxy(redis_url: str, fake_upstream: FakeUpstream) -> Iterator[RunningProxy]:
    settings = proxy_settings(redis_url, fake_upstream, anthropic_api_base=fake_upstream.root_url)
    with start_proxy(settings) as running:
        yield running


def sdk(proxy: RunningProxy) -> anthropic.Anthropic:
    # Anthropic's SDK sends the key as x-api-key and appends /v1/messages to the base.
    return anthropic.Anthropic(base_url=proxy.url, api_key=APP_KEY_A, max_retries=0)


def sent(fake: FakeUpstream) -> dict[str, Any]:
    found = [r for r in fake.requests if r.path.endswith("/messages")]
    assert found, [r.path for r in fake.requests]
    return found[-1].body  # type: ignore[no-any-return]


def persona_blocks(system: Any) -> list[dict[str, Any]]:
    return [b for b in system if PERSONA_MARK in b.get("text", "")]


def test_string_system_becomes_blocks_with_the_persona_last(anthropic_proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(anthropic_proxy, "google-oauth2|1234")
    raw = sdk(anthropic_proxy).messages.with_raw_response.create(
        model="claude-fake",
        max_tokens=100,
        system="Be kind.",
        messages=[{"role": "user", "content": "hello"}],
        metadata={"user_id": "google-oauth2|1234"},
        extra_headers={"anthropic-beta": "fake-beta-2026"},
    )
    message = raw.parse()
    body = sent(fake_upstream)
    assert body["system"][0] == {"type": "text", "text": "Be kind."}
    assert len(body["system"]) == 2 and len(persona_blocks(body["system"])) == 1
    assert body["system"][1]["text"].startswith("<user_preferences>")
    assert message.content[0].text == "fake answer to: hello"  # type: ignore[union-attr]
    assert PERSONA_MARK not in raw.http_response.text
    assert raw.headers["x-persona-version"] == "1"
    request = [r for r in fake_upstream.requests if r.path.endswith("/messages")][-1]
    assert request.headers["anthropic-version"] == raw.http_request.headers["anthropic-version"]
    assert request.headers["anthropic-beta"] == "fake-beta-2026"
    assert request.headers["x-api-key"] == "sk-upstream-secret"  # the app's key never leaves the proxy


def test_block_system_keeps_cache_control_and_streams(anthropic_proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(anthropic_proxy, "user 42")
    with sdk(anthropic_proxy).messages.stream(
        model="claude-fake",
        max_tokens=100,
        system=CACHED_SYSTEM,
        messages=[{"role": "user", "content": "stream please"}],
        extra_headers={"X-Persona-User": "user 42"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "fake answer to: stream please"
    assert final.stop_reason == "end_turn"
    body = sent(fake_upstream)
    assert body["system"][0] == CACHED_SYSTEM[0]
    assert len(persona_blocks(body["system"])) == 1 and body["system"][-1] is not body["system"][0]
    assert "cache_control" not in body["system"][-1]


def test_stream_event_names_are_kept(anthropic_proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(anthropic_proxy, "u/42")
    with httpx.stream(
        "POST",
        f"{anthropic_proxy.url}/v1/messages",
        json={"model": "m", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "x"}],
              "metadata": {"user_id": "u/42"}},
        headers={"x-api-key": APP_KEY_A, "anthropic-version": "2023-06-01"},
    ) as answer:
        text = answer.read().decode()
    names = [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "message_stop" and "content_block_delta" in names
    assert PERSONA_MARK not in text


def test_errors_have_anthropic_shape(anthropic_proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(anthropic.AuthenticationError) as auth:
        anthropic.Anthropic(base_url=anthropic_proxy.url, api_key="wrong", max_retries=0).messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert auth.value.body == {"type": "error", "error": {"type": "authentication_error", "message": "incorrect API key provided"}}
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk(anthropic_proxy).messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}], metadata={"user_id": "a\x00b"}
        )
    assert bad.value.body["type"] == "error"  # type: ignore[index]
    assert "control character" in bad.value.body["error"]["message"]  # type: ignore[index]
    fake_upstream.script(Reply(status=429, error_message="slow down", headers={"retry-after": "0"}))
    with pytest.raises(anthropic.RateLimitError) as limited:
        sdk(anthropic_proxy).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_translated_through_litellm_without_an_anthropic_base(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "tr@example.com")
    message = sdk(proxy).messages.create(
        model="fake-model",
        max_tokens=50,
        system=CACHED_SYSTEM,
        messages=[{"role": "user", "content": "translate me"}],
        metadata={"user_id": "tr@example.com"},
    )
    assert message.content[0].text == "fake answer to: translate me"  # type: ignore[union-attr]
    chat = fake_upstream.chat_requests[-1].body["messages"]
    systems = json.dumps([m for m in chat if m["role"] == "system"])
    assert systems.count(PERSONA_MARK) == 1
    assert systems.index("ACME assistant") < systems.index(PERSONA_MARK)
    assert PERSONA_MARK not in message.model_dump_json()

    with sdk(proxy).messages.stream(
        model="fake-model", max_tokens=50, system="Sys.", messages=[{"role": "user", "content": "and stream"}],
        metadata={"user_id": "tr@example.com"},
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "fake answer to: and stream"
    assert PERSONA_MARK not in text


def test_count_tokens_passes_through_to_the_anthropic_base(anthropic_proxy: RunningProxy, fake_upstream: FakeUpstream, proxy: RunningProxy) -> None:
    counted = sdk(anthropic_proxy).messages.count_tokens(model="m", messages=[{"role": "user", "content": "one two three"}])
    assert counted.input_tokens == 3
    with pytest.raises(anthropic.NotFoundError) as err:
        sdk(proxy).messages.count_tokens(model="m", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
