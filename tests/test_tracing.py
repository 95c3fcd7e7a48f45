"""OpenTelemetry tracing: a server span per call with the persona read, the quota admission and the
upstream call inside it, the W3C traceparent sent upstream, no persona text or user id in attributes
unless allowed; off unless the OTEL_* environment asks for it, and configured by it end to end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from middleware.app import create_app
from middleware.tracing import TracedRequests, Tracing, wanted
from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import process_env, serving
from tests.support.proxy import APP_KEY_A, RunningProxy, admin_client, proxy_settings
from tests.support.server_thread import ServerThread

PERSONA_TEXT = "Prefers answers in haiku form."
USER = "alice-4711"
APP_TRACE = "0af7651916cd43dd8448eb211c80319c"
APP_SPAN = "b7ad6b7169203331"


class Traced:
    def __init__(self, proxy: RunningProxy, spans: InMemorySpanExporter) -> None:
        self.proxy = proxy
        self.spans = spans

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())


def traced_proxy(redis_url: str, fake_upstream: FakeUpstream, *, user_ids: bool = False) -> Iterator[Traced]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    settings = proxy_settings(
        redis_url, fake_upstream, limits={"default": {"requests_per_minute": 1000}}, trace_user_ids=user_ids
    )
    app = create_app(settings, tracing=Tracing(provider, user_ids=settings.trace_user_ids))
    with RunningProxy(ServerThread(app).start(), settings) as proxy:
        with admin_client(proxy) as admin:
            assert admin.put(f"/admin/users/{USER}/persona", json={"text": PERSONA_TEXT}).status_code == 200
        spans.clear()
        yield Traced(proxy, spans)


@pytest.fixture
def traced(redis_url: str, fake_upstream: FakeUpstream) -> Iterator[Traced]:
    yield from traced_proxy(redis_url, fake_upstream)


def attribute_values(spans: list[ReadableSpan]) -> list[str]:
    return [str(value) for span in spans for value in (span.attributes or {}).values()] + [
        span.name for span in spans
    ]


def by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def test_chat_call_spans_nest_and_the_upstream_gets_the_traceparent(
    traced: Traced, fake_upstream: FakeUpstream
) -> None:
    client = openai.OpenAI(base_url=traced.proxy.v1, api_key=APP_KEY_A, max_retries=0)
    answer = client.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=[{"role": "user", "content": "hello"}],
        user=USER,
        extra_headers={"traceparent": f"00-{APP_TRACE}-{APP_SPAN}-01", "baggage": "app.secret=1"},
    )
    assert answer.headers["x-persona-version"] == "1"
    spans = traced.finished()
    named = by_name(spans)
    assert set(named) == {"POST /v1/chat/completions", "quota.admit", "persona.read", "upstream.call"}
    server = named["POST /v1/chat/completions"]
    trace_id, server_id = hex_ids(server)
    # The app's trace goes on through the proxy: the server span's parent is the app's span.
    assert trace_id == APP_TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == APP_SPAN
    for name in ("quota.admit", "persona.read", "upstream.call"):
        child = named[name]
        assert hex_ids(child)[0] == trace_id
        assert child.parent is not None and f"{child.parent.span_id:016x}" == server_id, name
    assert (server.attributes or {})["http.response.status_code"] == 200
    assert (named["persona.read"].attributes or {})["persona.version"] == 1
    # The upstream saw the upstream call's own span as its parent.
    _, upstream_id = hex_ids(named["upstream.call"])
    assert fake_upstream.chat_requests[-1].headers["traceparent"] == f"00-{trace_id}-{upstream_id}-01"
    assert PERSONA_TEXT in str(fake_upstream.chat_requests[-1].messages[0]["content"])
    assert "baggage" not in fake_upstream.chat_requests[-1].headers  # the app's baggage stays here
    # Neither the persona nor the user is in any span.
    recorded = " ".join(attribute_values(spans))
    assert USER not in recorded and "haiku" not in recorded
    assert (named["quota.admit"].attributes or {})["persona.tenant"] == "tenant-a"


def test_responses_and_passthrough_calls_are_traced_the_same_way(
    traced: Traced, fake_upstream: FakeUpstream
) -> None:
    client = openai.OpenAI(base_url=traced.proxy.v1, api_key=APP_KEY_A, max_retries=0)
    client.responses.create(model="fake-model", input="hi", user=USER)
    named = by_name(traced.finished())
    assert set(named) == {"POST /v1/responses", "quota.admit", "persona.read", "upstream.call"}
    assert (named["persona.read"].attributes or {})["persona.version"] == 1
    _, upstream_id = hex_ids(named["upstream.call"])
    assert fake_upstream.requests[-1].headers["traceparent"].split("-")[2] == upstream_id
    assert USER not in " ".join(attribute_values(traced.finished()))

    traced.spans.clear()
    client.embeddings.create(model="fake-model", input="words")
    named = by_name(traced.finished())
    assert set(named) == {"POST /v1/embeddings", "quota.admit", "upstream.call"}
    trace_id, upstream_id = hex_ids(named["upstream.call"])
    assert fake_upstream.requests[-1].headers["traceparent"].startswith(f"00-{trace_id}-{upstream_id}-")


def test_admin_routes_name_the_route_template_not_the_user(traced: Traced) -> None:
    with admin_client(traced.proxy) as admin:
        assert admin.get(f"/admin/users/{USER}/persona").json()["text"] == PERSONA_TEXT
    spans = traced.finished()
    assert [span.name for span in spans] == ["GET /admin/users/{user}/persona"]
    assert USER not in " ".join(attribute_values(spans))


def test_user_ids_on_spans_only_when_the_settings_allow(redis_url: str, fake_upstream: FakeUpstream) -> None:
    for traced in traced_proxy(redis_url, fake_upstream, user_ids=True):
        client = openai.OpenAI(base_url=traced.proxy.v1, api_key=APP_KEY_A, max_retries=0)
        client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], user=USER
        )
        named = by_name(traced.finished())
        assert (named["persona.read"].attributes or {})["enduser.id"] == USER
        assert (named["quota.admit"].attributes or {})["enduser.id"] == USER
        assert PERSONA_TEXT not in " ".join(attribute_values(traced.finished()))


def test_a_refused_call_records_the_refusal_on_the_quota_span(
    redis_url: str, fake_upstream: FakeUpstream
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    settings = proxy_settings(redis_url, fake_upstream, limits={"default": {"requests_per_minute": 1}})
    with RunningProxy(
        ServerThread(create_app(settings, tracing=Tracing(provider))).start(), settings
    ) as proxy:
        client = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
        spans.clear()
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    named = by_name(list(spans.get_finished_spans()))
    assert set(named) == {"POST /v1/chat/completions", "quota.admit"}  # nothing went upstream
    assert not named["quota.admit"].status.is_ok
    assert [event.name for event in named["quota.admit"].events] == ["exception"]
    assert (named["POST /v1/chat/completions"].attributes or {})["http.response.status_code"] == 429


@pytest.mark.parametrize(
    ("environ", "exporter"),
    [
        ({}, None),
        ({"OTEL_SERVICE_NAME": "proxy", "OTEL_RESOURCE_ATTRIBUTES": "a=b"}, None),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}, None),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, "otlp"),
    ],
)
def test_on_only_when_the_environment_names_an_exporter(
    environ: dict[str, str], exporter: str | None
) -> None:
    assert wanted(environ) == exporter
    tracing = Tracing.from_environ(environ)
    try:
        assert tracing.enabled is (exporter is not None)
        assert bool(tracing.aiohttp_trace_configs()) is (exporter is not None)
    finally:
        tracing.shutdown()


def middleware_names(app: Any) -> set[str]:
    return {getattr(m.cls, "__name__", "") for m in app.user_middleware}


def test_off_installs_nothing_on_the_app(redis_url: str, fake_upstream: FakeUpstream) -> None:
    settings = proxy_settings(redis_url, fake_upstream)
    off = create_app(settings, tracing=Tracing())
    assert TracedRequests.__name__ not in middleware_names(off)
    on = create_app(settings, tracing=Tracing(TracerProvider()))
    assert TracedRequests.__name__ in middleware_names(on)
    with RunningProxy(ServerThread(off).start(), settings) as proxy:
        client = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
        assert proxy.services.http.trace_configs == []
    assert "traceparent" not in fake_upstream.chat_requests[-1].headers


def exported_span_names(requests: list[Any]) -> set[str]:
    names: set[str] = set()
    for request in requests:
        export = ExportTraceServiceRequest()
        export.ParseFromString(request.raw_body)
        for resource_spans in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert service["service.name"] == "persona-test"
            names |= {span.name for scope in resource_spans.scope_spans for span in scope.spans}
    return names


@pytest.mark.slow
def test_persona_serve_exports_over_otlp_when_the_environment_says_so(
    redis_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    env = {
        **process_env(redis_url, fake_upstream),
        # the fake upstream stands in for the collector: it records what arrives on /v1/traces
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{fake_upstream.root_url}/v1/traces",
        "OTEL_SERVICE_NAME": "persona-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    with serving(env, tmp_path / "serve.log") as proxy:
        client = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            exports = [r for r in fake_upstream.requests if r.path == "/v1/traces"]
            if "POST /v1/chat/completions" in exported_span_names(exports):
                break
            time.sleep(0.1)
        assert "Tracing: on (exporter otlp)" in proxy.output()
    chat = fake_upstream.chat_requests[-1]
    exports = [r for r in fake_upstream.requests if r.path == "/v1/traces"]
    assert exports and exports[0].headers["content-type"] == "application/x-protobuf"
    assert {"POST /v1/chat/completions", "upstream.call"} <= exported_span_names(exports)
    assert chat.headers["traceparent"].startswith("00-")
