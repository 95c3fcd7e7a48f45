"""Every other OpenAI route passed through untouched, driven with the official openai SDK; routes
without /v1; upstream headers relayed; CORS; the app's credentials never forwarded."""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.dropin import PERSONA_MARK, give_persona
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.fake_upstream.other_apis import embedding_vector
from tests.support.proxy import APP_KEY_A, RunningProxy, proxy_settings, start_proxy


def client(proxy: RunningProxy, base: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=base or proxy.v1, api_key=APP_KEY_A, max_retries=0)


def last(fake: FakeUpstream, suffix: str):  # type: ignore[no-untyped-def]
    found = [r for r in fake.requests if r.path.endswith(suffix)]
    assert found, [r.path for r in fake.requests]
    return found[-1]


def test_embeddings_default_base64(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    raw = client(proxy).embeddings.with_raw_response.create(model="fake-model", input=["one", "two"])
    result = raw.parse()
    assert [d.embedding for d in result.data] == [embedding_vector("one"), embedding_vector("two")]
    sent = last(fake_upstream, "/embeddings")
    assert sent.body["encoding_format"] == "base64"  # the SDK's default, untouched
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-ratelimit-limit-requests"] == "10000"
    assert "openai-organization" not in raw.headers


def test_legacy_completions_and_models(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "alice")
    api = client(proxy)
    completion = api.completions.create(model="fake-model", prompt="once upon", user="alice")
    assert completion.choices[0].text == "fake completion of: once upon"
    assert PERSONA_MARK not in str(last(fake_upstream, "/v1/completions").body)  # not personalized
    assert api.models.retrieve("fake-model-large").id == "fake-model-large"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("no-such-model")
    listed = {m.id for m in api.models.list()}
    assert {"fake-model", "fake-judge"} <= listed


def test_audio_transcription_and_file_upload_multipart(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    audio = bytes(range(256)) * 400  # ~100 kB, arrives in several chunks
    api = client(proxy)
    text = api.audio.transcriptions.create(model="whisper-1", file=("clip.mp3", io.BytesIO(audio), "audio/mpeg"))
    assert text.text == f"fake transcript of clip.mp3 ({len(audio)} bytes, crc {zlib.crc32(audio)})"
    sent = last(fake_upstream, "/audio/transcriptions")
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")

    uploaded = api.files.create(file=("data.jsonl", io.BytesIO(b'{"a": 1}\n' * 1000)), purpose="batch")
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == ("data.jsonl", 9000, "batch")


def test_binary_answer_streams_back_unchanged(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    speech = client(proxy).audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert speech.content == bytes(range(256)) * 64
    assert speech.response.headers["content-type"] == "audio/mpeg"


def test_routes_without_v1(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "bob")
    api = client(proxy, base=proxy.url)
    chat = api.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}], user="bob")
    assert chat.choices[0].message.content == "fake answer to: hi"
    assert PERSONA_MARK in str(fake_upstream.chat_requests[-1].body["messages"])
    assert api.responses.create(model="fake-model", input="hey", user="bob").output_text == "fake answer to: hey"
    assert len(api.embeddings.create(model="fake-model", input="x").data) == 1
    assert api.models.retrieve("fake-model").id == "fake-model"


def test_app_key_checked_and_account_headers_dropped(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=proxy.v1, api_key="wrong", max_retries=0).embeddings.create(model="m", input="x")
    assert fake_upstream.requests == []
    openai.OpenAI(
        base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0, organization="org-app", project="proj-app"
    ).embeddings.create(model="fake-model", input="x")
    sent = last(fake_upstream, "/embeddings")
    assert "openai-organization" not in sent.headers and "openai-project" not in sent.headers
    assert APP_KEY_A not in str(sent.headers)


def test_size_limit_applies_to_streamed_uploads(redis_url: str, fake_upstream: FakeUpstream) -> None:
    with start_proxy(proxy_settings(redis_url, fake_upstream, max_body_bytes=10_000)) as proxy:
        def chunks() -> Iterator[bytes]:
            for _ in range(20):
                yield b"x" * 1000

        answer = httpx.post(
            f"{proxy.v1}/files", content=chunks(), headers={"Authorization": f"Bearer {APP_KEY_A}", "content-type": "application/octet-stream"}
        )
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "payload_too_large"


def test_chat_relays_upstream_headers_and_retry_after(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    raw = client(proxy).chat.completions.with_raw_response.create(model="fake-model", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-request-id"].startswith("req_") and raw.headers["openai-processing-ms"] == "3"
    fake_upstream.script(*[Reply(status=429, headers={"retry-after-ms": "7", "x-should-retry": "false"})] * 3)
    with pytest.raises(openai.RateLimitError) as err:
        client(proxy).chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.response.headers["retry-after-ms"] == "7"
    assert err.value.response.headers["x-should-retry"] == "false"


def test_cors_only_for_configured_origins(redis_url: str, fake_upstream: FakeUpstream, proxy: RunningProxy) -> None:
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    closed = httpx.options(f"{proxy.v1}/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    settings = proxy_settings(redis_url, fake_upstream, cors_origins=["https://app.example.com"])
    with start_proxy(settings) as open_proxy:
        answer = httpx.options(f"{open_proxy.v1}/chat/completions", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
        other = httpx.options(f"{open_proxy.v1}/chat/completions", headers={**preflight, "Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_metrics_count_each_route(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    client(proxy).embeddings.create(model="fake-model", input="x")
    client(proxy).responses.create(model="fake-model", input="x")
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert 'persona_route_requests_total{mode="passthrough",outcome="2xx",route="/v1/embeddings"} 1.0' in metrics
    assert 'persona_route_requests_total{mode="inject",outcome="ok",route="/v1/responses"} 1.0' in metrics
