"""Models that need provider translation go through litellm; the SDK sees the same OpenAI shapes."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from middleware.upstream import LitellmUpstream
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import APP_KEY_A, RunningProxy, proxy_settings, start_proxy


@pytest.fixture
def litellm_proxy(redis_url: str, fake_upstream: FakeUpstream) -> Iterator[RunningProxy]:
    with start_proxy(proxy_settings(redis_url, fake_upstream, upstream_mode="litellm")) as running:
        yield running


def sdk(proxy: RunningProxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)


def test_completion_and_stream_through_litellm(
    litellm_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    import httpx

    httpx.put(
        f"{litellm_proxy.url}/admin/users/alice/persona",
        json={"text": "LITELLM-PERSONA"},
        headers=litellm_proxy.admin_headers(),
    )
    completion = sdk(litellm_proxy).chat.completions.create(
        model="openai/fake-model", messages=[{"role": "user", "content": "via litellm"}], user="alice"
    )
    assert completion.choices[0].message.content == "fake answer to: via litellm"
    received = fake_upstream.chat_requests[-1]
    assert received.body["model"] == "fake-model"
    assert "LITELLM-PERSONA" in received.body["messages"][0]["content"]
    assert received.headers["authorization"] == "Bearer sk-upstream-secret"

    stream = sdk(litellm_proxy).chat.completions.create(
        model="openai/fake-model", messages=[{"role": "user", "content": "streamed words"}], stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        == "fake answer to: streamed words"
    )


def test_litellm_errors_keep_the_openai_shape(
    litellm_proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(Reply(status=429), Reply(content="after retry"))
    completion = sdk(litellm_proxy).chat.completions.create(
        model="openai/fake-model", messages=[{"role": "user", "content": "q"}]
    )
    assert completion.choices[0].message.content == "after retry"
    assert len(fake_upstream.chat_requests) == 2

    fake_upstream.script(*[Reply(status=500, error_message="down")] * 5)
    with pytest.raises(openai.InternalServerError) as err:
        sdk(litellm_proxy).chat.completions.create(
            model="openai/fake-model", messages=[{"role": "user", "content": "q"}]
        )
    assert err.value.status_code == 502


def test_provider_prefixed_models_route_to_litellm_in_auto_mode(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    upstream, model = proxy.services.upstreams.route("anthropic/claude-x")
    assert isinstance(upstream, LitellmUpstream) and model == "anthropic/claude-x"
    # The others take the pass-through path: the lean client's request reaches the upstream, the model
    # named as the upstream knows it (litellm's would come from the openai client, with its own user agent).
    for requested in ("openai/gpt-x", "meta-llama/Llama-3-8B"):  # vLLM-style names stay on the fast path
        sdk(proxy).chat.completions.create(model=requested, messages=[{"role": "user", "content": "q"}])
    seen = [
        (r.body["model"], r.headers["user-agent"] == "persona-middleware")
        for r in fake_upstream.chat_requests
    ]
    assert seen == [("gpt-x", True), ("meta-llama/Llama-3-8B", True)]
