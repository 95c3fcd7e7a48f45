"""Quotas, end-user tokens, usage and metrics hold on every chat-like route, as on chat completions:
the Responses API (official openai SDK) and the Messages API (official anthropic SDK), streamed and
not, and the pass-through (its request rate, a JSON answer's usage; user tokens refused)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any, cast

import anthropic
import httpx
import openai
import pytest
import redis

from tests.support.dropin import PERSONA_MARK, give_persona
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import APP_KEY_A, APP_KEY_B, RunningProxy, proxy_settings, start_proxy, user_token

# The quota check shares the persona read's time bound and fails open past it; a loaded test machine
# must not turn a slow check into an admitted call.
SLOW_OK = {"persona_read_timeout_s": 2.0}
ASK = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def limited(
    request: pytest.FixtureRequest, redis_url: str, fake_upstream: FakeUpstream
) -> Iterator[RunningProxy]:
    limits = request.param if hasattr(request, "param") else {}
    settings = proxy_settings(
        redis_url, fake_upstream, limits=limits, anthropic_api_base=fake_upstream.root_url, **SLOW_OK
    )
    with start_proxy(settings) as running:
        yield running


def openai_sdk(proxy: RunningProxy, key: str = APP_KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key=key, max_retries=0)


def anthropic_sdk(proxy: RunningProxy, key: str = APP_KEY_A, *, bearer: bool = False) -> anthropic.Anthropic:
    if bearer:  # Authorization: Bearer <key> instead of x-api-key
        return anthropic.Anthropic(base_url=proxy.url, auth_token=key, max_retries=0)
    return anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0)


def tokens_today(proxy: RunningProxy, tenant: str = "tenant-a") -> int:
    client = redis.Redis.from_url(proxy.settings.redis_url)
    try:
        day = time.strftime("%Y%m%d", time.gmtime())
        return int(cast(Any, client.get(f"pm:{{limits:{tenant}}}:tokens:{day}")) or 0)
    finally:
        client.close()


def tokens_reach(proxy: RunningProxy, expected: int) -> int:
    """The tenant's tokens of the day once they reach `expected` (a stream counts at its end), or
    what they are after a short deadline."""
    deadline = time.monotonic() + 5
    used = tokens_today(proxy)
    while used < expected and time.monotonic() < deadline:
        time.sleep(0.02)
        used = tokens_today(proxy)
    return used


def metric(proxy: RunningProxy, name: str, **labels: str) -> float:
    text = httpx.get(f"{proxy.url}/metrics", timeout=5).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# --- usage: tokens_per_day counts what each API reports ---------------------------------------------


@pytest.mark.parametrize("limited", [{"default": {"tokens_per_day": 10**6}}], indirect=True)
def test_responses_usage_is_counted_streamed_and_not(limited: RunningProxy) -> None:
    api = openai_sdk(limited)
    whole = api.responses.create(model="fake-model", input="count my tokens", user="u1")
    assert whole.usage is not None
    first = whole.usage.input_tokens + whole.usage.output_tokens
    assert first > 0 and tokens_reach(limited, first) == first

    events = list(
        api.responses.create(model="fake-model", input="and these ones too", stream=True, user="u1")
    )
    completed = events[-1]
    assert completed.type == "response.completed" and completed.response.usage is not None
    second = completed.response.usage.input_tokens + completed.response.usage.output_tokens
    assert tokens_reach(limited, first + second) == first + second
    assert (
        metric(limited, "persona_route_requests_total", route="/v1/responses", mode="inject", outcome="ok")
        == 1
    )
    assert (
        metric(
            limited, "persona_route_requests_total", route="/v1/responses", mode="inject", outcome="stream"
        )
        == 1
    )


@pytest.mark.parametrize("limited", [{"default": {"tokens_per_day": 10**6}}], indirect=True)
def test_messages_usage_is_counted_streamed_and_not(limited: RunningProxy) -> None:
    api = anthropic_sdk(limited)
    message = api.messages.create(model="claude-fake", max_tokens=50, messages=cast(Any, ASK))
    first = message.usage.input_tokens + message.usage.output_tokens
    assert first > 0 and tokens_reach(limited, first) == first

    with api.messages.stream(
        model="claude-fake", max_tokens=50, system="Be brief.", messages=cast(Any, ASK)
    ) as stream:
        final = stream.get_final_message()
    # message_start reports the input (and 1 output token), message_delta the final output count:
    # counted once each, not summed
    second = final.usage.input_tokens + final.usage.output_tokens
    assert final.usage.output_tokens > 1
    assert tokens_reach(limited, first + second) == first + second
    time.sleep(0.2)  # nothing more arrives later
    assert tokens_today(limited) == first + second
    assert (
        metric(limited, "persona_route_requests_total", route="/v1/messages", mode="inject", outcome="ok")
        == 1
    )
    assert (
        metric(limited, "persona_route_requests_total", route="/v1/messages", mode="inject", outcome="stream")
        == 1
    )


def test_translated_messages_usage_is_counted(redis_url: str, fake_upstream: FakeUpstream) -> None:
    settings = proxy_settings(
        redis_url, fake_upstream, limits={"default": {"tokens_per_day": 10**6}}, **SLOW_OK
    )
    with start_proxy(settings) as translated:  # no Anthropic base: litellm to the OpenAI-compatible upstream
        message = anthropic_sdk(translated).messages.create(
            model="fake-model", max_tokens=50, messages=cast(Any, ASK)
        )
        used = message.usage.input_tokens + message.usage.output_tokens
        assert used > 0 and tokens_reach(translated, used) == used


@pytest.mark.parametrize("limited", [{"default": {"tokens_per_day": 10**6}}], indirect=True)
def test_passthrough_counts_a_json_answers_usage(limited: RunningProxy) -> None:
    embedded = openai_sdk(limited).embeddings.create(model="fake-model", input=["one", "two", "three"])
    assert embedded.usage.prompt_tokens == 3
    assert tokens_reach(limited, 3) == 3
    completion = openai_sdk(limited).completions.create(model="fake-model", prompt="say something")
    assert completion.usage is not None
    assert tokens_reach(limited, 3 + completion.usage.total_tokens) == 3 + completion.usage.total_tokens


@pytest.mark.parametrize("limited", [{"default": {"tokens_per_day": 5}}], indirect=True)
def test_a_spent_day_refuses_every_route(limited: RunningProxy) -> None:
    openai_sdk(limited).responses.create(
        model="fake-model", input="spend the whole day on this one", user="u1"
    )
    assert tokens_reach(limited, 5) >= 5
    with pytest.raises(openai.RateLimitError) as responses:
        openai_sdk(limited).responses.create(model="fake-model", input="x", user="u1")
    assert responses.value.code == "tokens_per_day"
    with pytest.raises(anthropic.RateLimitError) as messages:
        anthropic_sdk(limited).messages.create(model="claude-fake", max_tokens=5, messages=cast(Any, ASK))
    assert messages.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": messages.value.body["error"]["message"]},  # type: ignore[index]
    }
    assert int(messages.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        openai_sdk(limited).embeddings.create(model="fake-model", input=["x"])
    assert openai_sdk(limited, APP_KEY_B).responses.create(model="fake-model", input="x").output_text


# --- request rate and caps ---------------------------------------------------------------------------


@pytest.mark.parametrize("limited", [{"default": {"requests_per_minute": 3}}], indirect=True)
def test_requests_per_minute_counts_responses_messages_and_passthrough(
    limited: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    openai_sdk(limited).responses.create(model="fake-model", input="one", user="u1")
    anthropic_sdk(limited).messages.create(model="claude-fake", max_tokens=5, messages=cast(Any, ASK))
    openai_sdk(limited).embeddings.create(model="fake-model", input=["three"])
    upstream_calls = len(fake_upstream.requests)
    with pytest.raises(openai.RateLimitError) as responses:
        openai_sdk(limited).responses.create(model="fake-model", input="four", user="u1")
    assert responses.value.code == "requests_per_minute"
    with pytest.raises(anthropic.RateLimitError):
        anthropic_sdk(limited).messages.create(model="claude-fake", max_tokens=5, messages=cast(Any, ASK))
    with pytest.raises(openai.RateLimitError):
        openai_sdk(limited).completions.create(model="fake-model", prompt="x")
    assert len(fake_upstream.requests) == upstream_calls  # refused calls never went upstream
    assert (
        metric(limited, "persona_quota_refusals_total", tenant="tenant-a", reason="requests_per_minute") == 3
    )


@pytest.mark.parametrize("limited", [{"default": {"max_output_tokens": 100}}], indirect=True)
def test_output_token_cap_on_responses_and_messages(
    limited: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    with pytest.raises(openai.BadRequestError) as responses:
        openai_sdk(limited).responses.create(model="fake-model", input="x", max_output_tokens=5000)
    assert responses.value.code == "limit_exceeded"
    with pytest.raises(anthropic.BadRequestError) as messages:
        anthropic_sdk(limited).messages.create(model="claude-fake", max_tokens=5000, messages=cast(Any, ASK))
    assert "max_tokens" in messages.value.body["error"]["message"]  # type: ignore[index]
    assert fake_upstream.requests == []


# --- end-user tokens ---------------------------------------------------------------------------------


def test_a_user_token_acts_for_its_user_on_responses(
    limited: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    give_persona(limited, "alice")
    as_alice = openai_sdk(limited, user_token(limited, "alice"))
    answered = as_alice.responses.create(model="fake-model", input="hi", instructions="Sys.")  # no user named
    sent = [r.body for r in fake_upstream.requests if r.path == "/v1/responses"][-1]
    assert sent["instructions"].count(PERSONA_MARK) == 1 and answered.instructions == "Sys."
    as_alice.responses.create(model="fake-model", input="hi", user="alice")  # naming itself is fine
    with pytest.raises(openai.PermissionDeniedError) as other:
        as_alice.responses.create(model="fake-model", input="hi", user="bob")
    assert other.value.code == "user_token_mismatch"
    with pytest.raises(openai.PermissionDeniedError):
        as_alice.responses.create(model="fake-model", input="hi", extra_headers={"X-Persona-User": "bob"})
    # a stored response is the tenant's: a user token does not reach it
    with pytest.raises(openai.PermissionDeniedError):
        as_alice.responses.retrieve(answered.id)


def test_a_user_token_acts_for_its_user_on_messages(
    limited: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    give_persona(limited, "alice")
    token = user_token(limited, "alice")
    for api in (anthropic_sdk(limited, token), anthropic_sdk(limited, token, bearer=True)):
        message = api.messages.create(model="claude-fake", max_tokens=20, messages=cast(Any, ASK))
        assert message.content
        system = [r.body for r in fake_upstream.requests if r.path.endswith("/messages")][-1]["system"]
        assert sum(PERSONA_MARK in block["text"] for block in system) == 1
        with pytest.raises(anthropic.PermissionDeniedError) as other:
            api.messages.create(
                model="claude-fake", max_tokens=20, messages=cast(Any, ASK), metadata={"user_id": "bob"}
            )
        assert other.value.body["error"]["type"] == "permission_error"  # type: ignore[index]


def test_the_passthrough_refuses_user_tokens(limited: RunningProxy, fake_upstream: FakeUpstream) -> None:
    as_alice = openai_sdk(limited, user_token(limited, "alice"))
    with pytest.raises(openai.PermissionDeniedError) as embeddings:
        as_alice.embeddings.create(model="fake-model", input=["x"])
    assert embeddings.value.code == "user_token_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        as_alice.files.list()
    assert [r for r in fake_upstream.requests if "/embeddings" in r.path or "/files" in r.path] == []
    assert as_alice.models.list().data  # listing the models is open to end users
