"""OpenTelemetry tracing of the API calls, off unless the standard `OTEL_*` environment asks for it.

On when `OTEL_TRACES_EXPORTER` names an exporter (not `none`) or an `OTEL_EXPORTER_OTLP_*` variable is
set (then the exporter is OTLP over HTTP); `OTEL_SDK_DISABLED=true` keeps it off. The SDK reads the
rest itself: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_*`,
`OTEL_EXPORTER_OTLP_*`, `OTEL_PROPAGATORS`.

The spans of one call: a server span (`TracedRequests`; the app's own `traceparent`, if it sent one, is
its parent) and inside it `quota.admit`, `persona.read` and one `upstream.call` per HTTP request to an
upstream (`start_upstream_call`: from sending to the answer's headers, retries each their own; a
stream's body is timed by the server span), which carries that span's W3C `traceparent`. Attributes never hold
persona text; the end user's id only with `PERSONA_TRACE_USER_IDS=true`.

Off, `span` hands back one shared no-op context manager and nothing else is installed: no ASGI layer
(`create_app` adds `TracedRequests` only when `enabled`), no aiohttp hooks, no import of the SDK.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("middleware.tracing")

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]
_OFF: AbstractContextManager[None] = contextlib.nullcontext()
# Only the trace context is taken from the app: its baggage is not handed on to the upstream.
_PROPAGATED = (b"traceparent", b"tracestate")


def wanted(environ: Mapping[str, str]) -> str | None:
    """The traces exporter the environment asks for (`otlp`, `console`, …), or None: tracing off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        first = named.split(",")[0].strip()
        return None if first == "none" else first
    if any(name.startswith("OTEL_EXPORTER_OTLP_") for name in environ):
        return "otlp"
    return None


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    """The exporter registered under `name` (the SDK's entry points); `otlp` is OTLP over HTTP unless
    OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL says grpc."""
    if name == "otlp":
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        name = "otlp_proto_grpc" if protocol.strip() == "grpc" else "otlp_proto_http"
    for found in entry_points(group="opentelemetry_traces_exporter", name=name):
        exporter: SpanExporter = found.load()()
        return exporter
    log.warning("OTEL_TRACES_EXPORTER names %r, which no installed package provides: tracing off", name)
    return None


class Tracing:
    """The tracer of one app (or none). Built by `from_environ`; tests hand in their own provider."""

    def __init__(
        self, provider: TracerProvider | None = None, *, user_ids: bool = False, owned: bool = False
    ):
        self._provider = provider
        self._owned = owned  # made here from the environment: shut down with the app
        self._tracer: Tracer | None = None
        if provider is not None:
            from middleware import __version__

            self._tracer = provider.get_tracer("middleware", __version__)
        self.user_ids = user_ids

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, user_ids: bool = False) -> Tracing:
        name = wanted(environ)
        if name is None:
            return cls()
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporter = _exporter(name, environ)
        if exporter is None:
            return cls()
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "persona-middleware"}))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("Tracing: on (exporter %s)", name)
        return cls(provider, user_ids=user_ids, owned=True)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def span(
        self, name: str, tenant: str | None = None, user: str | None = None
    ) -> AbstractContextManager[Any]:
        """A child span of the current one (None inside `with` when tracing is off). The user id is
        recorded only when the settings allow it."""
        if self._tracer is None:
            return _OFF
        attributes: dict[str, str] = {}
        if tenant is not None:
            attributes["persona.tenant"] = tenant
        if user is not None and self.user_ids:
            attributes["enduser.id"] = user
        return self._tracer.start_as_current_span(name, attributes=attributes)

    @property
    def tracer(self) -> Tracer | None:
        return self._tracer

    def start_upstream_call(self, method: str, host: str, port: int) -> tuple[Span, dict[str, str]]:
        """An `upstream.call` span, started (`end_upstream_call` ends it), and the headers that carry
        it upstream (W3C `traceparent`). Only when tracing is on."""
        from opentelemetry import propagate, trace

        assert self._tracer is not None
        span = self._tracer.start_span(
            "upstream.call",
            kind=trace.SpanKind.CLIENT,
            attributes={"http.request.method": method, "server.address": host, "server.port": port},
        )
        headers: dict[str, str] = {}
        propagate.inject(headers, context=trace.set_span_in_context(span))
        return span, headers

    @staticmethod
    def end_upstream_call(
        span: Span, *, status: int | None = None, error: BaseException | None = None
    ) -> None:
        """End an `upstream.call` span with the answer's status, or the error the call raised."""
        from opentelemetry import trace

        if error is not None:
            span.record_exception(error)
            span.set_status(trace.StatusCode.ERROR, type(error).__name__)
        elif status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.StatusCode.ERROR)
        span.end()

    def aiohttp_trace_configs(self) -> list[aiohttp.TraceConfig]:
        """Hooks for the aiohttp session of the routes passed through: an `upstream.call` span per
        request, its `traceparent` sent with it (none when tracing is off)."""
        if self._tracer is None:
            return []
        import aiohttp

        async def started(_: Any, context: Any, params: aiohttp.TraceRequestStartParams) -> None:
            url = params.url
            context.span, headers = self.start_upstream_call(params.method, url.host or "", url.port or 0)
            params.headers.update(headers)

        async def answered(_: Any, context: Any, params: aiohttp.TraceRequestEndParams) -> None:
            self.end_upstream_call(context.span, status=params.response.status)

        async def failed(_: Any, context: Any, params: aiohttp.TraceRequestExceptionParams) -> None:
            self.end_upstream_call(context.span, error=params.exception)

        config = aiohttp.TraceConfig()
        config.on_request_start.append(started)
        config.on_request_end.append(answered)
        config.on_request_exception.append(failed)
        return [config]

    def shutdown(self) -> None:
        """Export what is pending and stop (only a provider made by `from_environ`)."""
        if self._owned and self._provider is not None:
            self._provider.shutdown()


TRACING_OFF = Tracing()  # the default of every hook: tracing off


class TracedRequests:
    """The server span of each HTTP call, named by the route template that answered
    (`POST /v1/chat/completions`, `GET /admin/users/{user}/persona`: never the user id itself).

    Installed inside the path and body layers, so the router's match is on the scope it sees."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        assert tracing.tracer is not None, "installed only when tracing is on"
        self.app = app
        self.tracer = tracing.tracer

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import propagate, trace

        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _PROPAGATED
        }
        method = scope["method"]
        status = 0

        async def traced_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.start_as_current_span(
            f"{method}",
            context=propagate.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method},
        ) as span:
            try:
                await self.app(scope, receive, traced_send)
            finally:
                template = getattr(scope.get("route"), "path", None)
                if isinstance(template, str):
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.StatusCode.ERROR)
