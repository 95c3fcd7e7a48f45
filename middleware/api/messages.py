"""POST /v1/messages: the Anthropic Messages API, personalized.

The persona is a text block after the app's `system` (personalize/placement.py). With
PERSONA_ANTHROPIC_API_BASE set the call passes through to that Anthropic-compatible base (bytes in,
bytes out, SSE event names kept); without it, litellm translates it to the configured upstream.
Errors here have Anthropic's shape: {"type": "error", "error": {"type", "message"}}.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from middleware.api.chat import MODE_HEADER, persona_mode
from middleware.api.chat_schema import FORBIDDEN_FIELDS
from middleware.api.chatlike import context_tag, persona_headers, routing_text
from middleware.api.deps import json_body
from middleware.api.raw import forwarder, relayed_response
from middleware.api.responses import JSONBytes
from middleware.errors import (
    ForbiddenField,
    InvalidRequest,
    NotFound,
    PersonaError,
    UpstreamError,
    ValidationFailed,
)
from middleware.forward import anthropic_target
from middleware.identity import end_user_id, tenant_for_app_key
from middleware.personalize.placement import with_system
from middleware.services import Services
from middleware.upstream import LITELLM_PROVIDERS, ClientDisconnected, cancel_on_disconnect, monotonic_ms

router = APIRouter(tags=["messages"])

ROUTE = "/v1/messages"
# Request headers an Anthropic-compatible base needs from the app.
ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta", "content-type", "accept")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def anthropic_error(exc: PersonaError) -> Response:
    return JSONBytes(
        anthropic_error_body(exc.status_code, exc.message),
        status_code=exc.status_code,
        headers=dict(exc.headers) or None,
    )


def anthropic_stream_error(error: UpstreamError) -> bytes:
    return (
        b"event: error\ndata: "
        + orjson.dumps(anthropic_error_body(error.status_code, error.message))
        + b"\n\n"
    )


def validate_messages_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    forbidden = sorted(FORBIDDEN_FIELDS.intersection(body))
    if forbidden:
        raise ForbiddenField(f"field {forbidden[0]!r} is not allowed: the proxy decides where requests go")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("model: Field required (a string)")
    if not isinstance(body.get("messages"), list):
        raise InvalidRequest("messages: Field required (a list)")
    if not isinstance(body.get("max_tokens"), int):
        raise InvalidRequest("max_tokens: Field required (an integer)")
    return body


@router.post(ROUTE)
async def create_message(request: Request) -> Response:
    try:
        return await _create_message(request)
    except PersonaError as exc:
        status = 400 if isinstance(exc, ValidationFailed) else exc.status_code
        exc.status_code = status
        return anthropic_error(exc)


async def _create_message(request: Request) -> Response:
    started = time.perf_counter()
    services: Services = request.app.state.services
    settings = services.settings
    tenant = tenant_for_app_key(request.headers, settings)
    body = validate_messages_body(await json_body(request))
    user = end_user_id(request.headers, body)
    mode = persona_mode(request)
    if mode == "rerank":
        raise InvalidRequest(f"{MODE_HEADER}: rerank is available on /v1/chat/completions only")

    version: int | None = None
    context: str | None = None
    tag = context_tag(request.headers, {})  # Anthropic's metadata holds user_id only: the header
    if user is not None and mode != "off":
        found = await services.personalizer.current(
            tenant, user, tag=tag, text=routing_text(body.get("messages"))
        )
        if found is not None:
            context = found.context
            body["system"] = with_system(body.get("system"), found.block)
            version = found.version
            services.metrics.persona_injected.inc()

    body["model"] = settings.upstream_model(body["model"])
    overhead_ms = monotonic_ms(started)
    services.metrics.overhead_seconds.observe(overhead_ms / 1000.0)
    headers = persona_headers(version, overhead_ms, context)
    stream = bool(body.get("stream"))
    metric = services.metrics.route_requests
    target = anthropic_target(settings)
    try:
        if target is not None:
            forwarded = {k: v for k in ANTHROPIC_HEADERS if (v := request.headers.get(k))}
            forwarded["content-type"] = "application/json"
            upstream = await cancel_on_disconnect(
                request.receive,
                forwarder(request, services).open(target, "POST", ROUTE, "", forwarded, orjson.dumps(body)),
            )
            # Bytes out as they come (errors included: the base already speaks Anthropic's shape).
            outcome = "error" if upstream.status >= 400 else ("stream" if stream else "ok")
            metric.labels(ROUTE, mode, outcome).inc()
            return relayed_response(upstream, headers, anthropic_stream_error)
        answer = await cancel_on_disconnect(request.receive, _translated(services, body))
    except ClientDisconnected:
        services.metrics.client_disconnects.inc()
        return Response(status_code=499)
    except BaseException:
        metric.labels(ROUTE, mode, "error").inc()
        raise
    if stream:
        metric.labels(ROUTE, mode, "stream").inc()
        return StreamingResponse(_sse_bytes(answer), media_type="text/event-stream", headers=headers)
    metric.labels(ROUTE, mode, "ok").inc()
    data = answer.model_dump(exclude_none=True) if hasattr(answer, "model_dump") else answer
    return JSONBytes(data, headers=headers)


@router.post(ROUTE + "/count_tokens")
async def count_tokens(request: Request) -> Response:
    """Passed to the Anthropic-compatible base as it is; without one there is nothing to count with."""
    try:
        services: Services = request.app.state.services
        tenant_for_app_key(request.headers, services.settings)
        target = anthropic_target(services.settings)
        if target is None:
            raise NotFound("token counting needs an Anthropic-compatible base (PERSONA_ANTHROPIC_API_BASE)")
        forwarded = {k: v for k in ANTHROPIC_HEADERS if (v := request.headers.get(k))}
        upstream = await forwarder(request, services).open(
            target, "POST", ROUTE + "/count_tokens", "", forwarded, await request.body()
        )
    except PersonaError as exc:
        return anthropic_error(exc)
    services.metrics.route_requests.labels(
        ROUTE + "/count_tokens", "passthrough", f"{upstream.status // 100}xx"
    ).inc()
    return relayed_response(upstream)


async def _translated(services: Services, body: dict[str, Any]) -> Any:
    """litellm's Anthropic-messages adapter, to the configured (OpenAI-compatible or other) upstream."""
    call = dict(body)
    provider, _, rest = call["model"].partition("/")
    if not (rest and provider in LITELLM_PROVIDERS) and services.settings.upstream_api_base:
        call["custom_llm_provider"] = "openai"
        if provider == "openai" and rest:
            call["model"] = rest
    return await services.upstreams.litellm().messages(call)


async def _sse_bytes(stream: Any) -> AsyncIterator[bytes]:
    """litellm's stream (SSE bytes, or event dicts) as Anthropic SSE; failures as an error event."""
    try:
        async for item in stream:
            if isinstance(item, bytes | bytearray):
                yield bytes(item)
            elif isinstance(item, str):
                yield item.encode()
            else:
                data = item.model_dump(exclude_none=True) if hasattr(item, "model_dump") else dict(item)
                name = str(data.get("type", "message"))
                yield b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
    except Exception as exc:
        error = exc if isinstance(exc, UpstreamError) else UpstreamError(f"the upstream stream broke: {exc}")
        yield anthropic_stream_error(error)
