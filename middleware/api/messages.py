"""POST /v1/messages: the Anthropic Messages API, personalized.

The persona is a text block after the app's `system` (personalize/placement.py). With
PERSONA_ANTHROPIC_API_BASE set the call passes through to that Anthropic-compatible base (bytes in,
bytes out, SSE event names kept); without it, litellm translates it to the configured upstream.
Errors here have Anthropic's shape: {"type": "error", "error": {"type", "message"}}.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from middleware.api.chat_schema import FORBIDDEN_FIELDS
from middleware.api.chatlike import Answer, Framing, admit, answer
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
from middleware.forward import Target, anthropic_target, forwarded_response_headers, relay_body
from middleware.identity import tenant_for_app_key
from middleware.personalize.placement import with_system
from middleware.services import Services
from middleware.upstream import LITELLM_PROVIDERS, body_chunks

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


def anthropic_failure(exc: PersonaError) -> Response:
    """A failure on this route in Anthropic's shape (a validation failure is its 400)."""
    if isinstance(exc, ValidationFailed):
        exc.status_code = 400
    return anthropic_error(exc)


ANTHROPIC = Framing(error_response=anthropic_failure, metric_route=ROUTE)


@router.post(ROUTE)
async def create_message(request: Request) -> Response:
    services: Services = request.app.state.services
    settings = services.settings
    try:
        call = await admit(request, services, validate_messages_body)
    except PersonaError as exc:
        return anthropic_failure(exc)
    body = call.body
    try:
        if call.found is not None:
            body["system"] = with_system(body.get("system"), call.found.block)
        body["model"] = settings.upstream_model(body["model"])
    except PersonaError as exc:
        await call.lease.release()
        return anthropic_failure(exc)
    target = anthropic_target(settings)
    work = _passed(request, services, target, body) if target is not None else _translated(services, body)
    return await answer(request, services, call, work, framing=ANTHROPIC)


async def _passed(request: Request, services: Services, target: Target, body: dict[str, Any]) -> Answer:
    """To the Anthropic-compatible base: bytes in, bytes out (errors included: the base already speaks
    Anthropic's shape), SSE event names kept. Uncompressed, so the answer's usage can be counted."""
    forwarded = {k: v for k in ANTHROPIC_HEADERS if (v := request.headers.get(k))}
    forwarded["content-type"] = "application/json"
    forwarded["accept-encoding"] = "identity"
    upstream = await forwarder(request, services).open(
        target, "POST", ROUTE, "", forwarded, orjson.dumps(body)
    )
    headers = {
        name.lower(): value
        for name, value in forwarded_response_headers(upstream.headers.items())
        if name.lower() not in ("content-length", "content-type")
    }
    content_type = upstream.headers.get("content-type") or "application/json"
    outcome = "error" if upstream.status >= 400 else None
    if content_type.startswith("text/event-stream"):
        chunks = relay_body(upstream, True, anthropic_stream_error)
        return Answer(chunks, headers, outcome, upstream.status, content_type)
    data = b"".join([chunk async for chunk in body_chunks(upstream)])
    return Answer(data, headers, outcome, upstream.status, content_type)


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


async def _translated(services: Services, body: dict[str, Any]) -> Answer:
    """litellm's Anthropic-messages adapter, to the configured (OpenAI-compatible or other) upstream."""
    call = dict(body)
    provider, _, rest = call["model"].partition("/")
    if not (rest and provider in LITELLM_PROVIDERS) and services.settings.upstream_api_base:
        call["custom_llm_provider"] = "openai"
        if provider == "openai" and rest:
            call["model"] = rest
    result = await services.upstreams.litellm().messages(call)
    if body.get("stream"):
        return Answer(_sse_bytes(result))
    data = result.model_dump(exclude_none=True) if hasattr(result, "model_dump") else result
    return Answer(bytes(JSONBytes(data).body))


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
