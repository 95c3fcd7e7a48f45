"""POST /v1/chat/completions: the drop-in OpenAI-compatible surface (GET /v1/models: api/passthrough.py).

The body is parsed once, only `messages` (and `model`, for aliases) is touched, and the upstream's
answer goes back as bytes, streamed chunk by chunk when the client asked for a stream.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from middleware.api.deps import parse_json
from middleware.errors import ForbiddenField, InvalidRequest, ValidationFailed
from middleware.identity import end_user_id, tenant_for_app_key
from middleware.personalize.block import inject_block
from middleware.rerank.mode import rerank_completion
from middleware.services import Services
from middleware.upstream import ClientDisconnected, cancel_on_disconnect, monotonic_ms

router = APIRouter(tags=["chat"])

MODES = ("inject", "off", "rerank")
MODE_HEADER = "x-persona-mode"
# Fields that would let a client choose where the proxy sends its credentials, or swap them.
FORBIDDEN_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "api_type",
        "organization",
        "custom_llm_provider",
        "extra_headers",
        "headers",
        "litellm_params",
        "proxy",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_region_name",
        "vertex_credentials",
        "vertex_project",
        "azure_ad_token",
        "mock_response",
        "user_config",
    }
)


def validate_chat_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed("the request body must be a JSON object")
    forbidden = sorted(FORBIDDEN_FIELDS.intersection(body))
    if forbidden:
        raise ForbiddenField(
            f"field {forbidden[0]!r} is not allowed: the proxy decides where requests go",
            param=forbidden[0],
        )
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ValidationFailed("'model' is required and must be a string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValidationFailed("'messages' must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValidationFailed(f"messages[{i}] must be an object with a 'role'", param=f"messages[{i}]")
    return body


def persona_mode(request: Request) -> str:
    mode = request.headers.get(MODE_HEADER, "inject").strip().lower() or "inject"
    if mode not in MODES:
        raise InvalidRequest(f"{MODE_HEADER} must be one of {', '.join(MODES)}", param=MODE_HEADER)
    return mode


CHAT_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {
                    "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
                    "content": {"type": "string"},
                },
            },
        },
        "stream": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 1, "maximum": 8},
        "user": {"type": "string"},
    },
    "additionalProperties": True,
}


@router.post(
    "/v1/chat/completions",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST_SCHEMA}}}
    },
)
async def chat_completions(request: Request) -> Response:
    # The hot path takes its services straight from app state (no dependency resolution).
    started = time.perf_counter()
    services: Services = request.app.state.services
    settings = services.settings
    tenant = tenant_for_app_key(request.headers, settings)
    body = validate_chat_body(parse_json(await request.body()))
    user = end_user_id(request.headers, body)
    mode = persona_mode(request)

    block: str | None = None
    version: int | None = None
    version_id: str | None = None
    if user is not None and mode != "off":
        found = await services.personalizer.current(tenant, user)
        if found is not None:
            block, version, version_id = found
            services.metrics.persona_injected.inc()

    if mode == "rerank":
        # The variants move the app's instruction around, so the block goes in per candidate.
        return await rerank_completion(
            services,
            request,
            body,
            tenant=tenant,
            user=user,
            block=block,
            version=version,
            version_id=version_id,
            started=started,
        )
    if block is not None:
        body["messages"] = inject_block(body["messages"], block)

    upstream, body["model"] = services.upstreams.route(body["model"])
    overhead_ms = monotonic_ms(started)
    services.metrics.overhead_seconds.observe(overhead_ms / 1000.0)
    headers = persona_headers(version, overhead_ms)

    try:
        if body.get("stream"):
            chunks = await cancel_on_disconnect(request.receive, upstream.stream(body, headers))
            services.metrics.chat_requests.labels(mode, "stream").inc()
            return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)
        data = await cancel_on_disconnect(request.receive, upstream.complete(body, headers))
    except ClientDisconnected:
        services.metrics.client_disconnects.inc()
        return Response(status_code=499)
    except BaseException:
        services.metrics.chat_requests.labels(mode, "error").inc()
        raise
    services.metrics.chat_requests.labels(mode, "ok").inc()
    return Response(data, media_type="application/json", headers=headers)


def persona_headers(version: int | None, overhead_ms: float) -> dict[str, str]:
    return {
        "x-persona-version": str(version) if version is not None else "none",
        "x-persona-overhead-ms": f"{overhead_ms:.3f}",
    }
