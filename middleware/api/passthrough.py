"""Every other OpenAI API route (embeddings, completions, moderations, audio, images, files, batches,
vector stores, models/{id}, ...): passed through untouched after the app key is checked.

Not personalized. The upstream credentials replace the app's; bodies stream both ways; the size limit
(middleware.limits) still applies. GET /v1/models merges the upstream's list with the configured
model names and aliases. This router is included last: the specific routes answer first.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from middleware.api.paths import ROOT_API_SEGMENTS
from middleware.api.raw import BodyStream, forwarder, relayed_response, relayed_whole
from middleware.api.responses import JSONBytes
from middleware.errors import NotFound, PayloadTooLarge, PersonaError, UpstreamError
from middleware.forward import forwarded_request_headers, openai_target
from middleware.identity import app_caller, tenant_for_app_key
from middleware.quotas.service import Lease
from middleware.services import Services
from middleware.upstream import ClientDisconnected, body_chunks

router = APIRouter(tags=["passthrough"])

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
# The proxy's own /v1 resources: never forwarded.
OWN_RESOURCES = frozenset({"preferences", "comparisons", "evaluations", "sessions", "feedback"})
# Two-level resources whose second segment names the operation (kept in the metrics label).
NESTED = frozenset({"audio", "images", "fine_tuning", "chat"})


def route_label(path: str) -> str:
    """A bounded metrics label for a forwarded path: `/v1/audio/transcriptions`, `/v1/files/{id}`."""
    parts = [p for p in path.split("/") if p][1:]  # drop "v1"
    if not parts or parts[0] not in ROOT_API_SEGMENTS:
        return "/v1/other"
    if parts[0] in NESTED and len(parts) > 1:
        return f"/v1/{parts[0]}/{parts[1]}" + ("/{id}" if len(parts) > 2 else "")
    return f"/v1/{parts[0]}" + ("/{id}" if len(parts) > 1 else "")


def model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "persona-middleware"}


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """The upstream's models followed by the configured names and aliases (each id once)."""
    services: Services = request.app.state.services
    app_caller(request.headers, services.settings, services.user_tokens)  # an end user may list them too
    data: list[dict[str, Any]] = []
    target = openai_target(services.settings)
    if target is not None:
        try:
            upstream = await forwarder(request, services).open(
                target, "GET", "/models", "", {"accept": "application/json"}, None
            )
            async with upstream:
                if upstream.status == 200:
                    listed = orjson.loads(await upstream.read()).get("data")
                    data = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
        except (UpstreamError, aiohttp.ClientError, orjson.JSONDecodeError, AttributeError):
            data = []  # the configured names still answer
    seen = {m.get("id") for m in data}
    data.extend(model_entry(n) for n in services.settings.public_models() if n not in seen)
    services.metrics.route_requests.labels("/v1/models", "passthrough", "ok").inc()
    return JSONBytes({"object": "list", "data": data})


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> Response:
    """A configured name or alias answers here; any other id is asked of the upstream."""
    services: Services = request.app.state.services
    tenant = tenant_for_app_key(request.headers, services.settings)
    if model in services.settings.public_models():
        services.metrics.route_requests.labels("/v1/models/{id}", "passthrough", "ok").inc()
        return JSONBytes(model_entry(model))
    return await forward(request, services, lease=await services.quotas.admit(tenant, None))


# The busiest passed-through resources get routes of their own, which app.py mounts right after the
# chat-like routes: a call to them is matched there instead of after every other route of the app.
DIRECT = ("embeddings", "completions", "moderations", "audio", "images", "files", "batches", "uploads")
direct_router = APIRouter(tags=["passthrough"])


async def passthrough_direct(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant = tenant_for_app_key(request.headers, services.settings)  # a user token: 403
    # the tenant's request rate and concurrency (no Redis at all when the tenant is not metered)
    return await forward(request, services, lease=await services.quotas.admit(tenant, None))


for _resource in DIRECT:
    for _path in (f"/v1/{_resource}", f"/v1/{_resource}/{{rest:path}}"):
        direct_router.add_api_route(_path, passthrough_direct, methods=METHODS, include_in_schema=False)


@router.api_route("/v1/{path:path}", methods=METHODS, include_in_schema=False)
async def passthrough(path: str, request: Request) -> Response:
    first = path.split("/", 1)[0]
    if first in OWN_RESOURCES or path == "chat/completions":
        raise PersonaError(
            f"{request.method} {request.url.path} is not a route",
            error_type="invalid_request_error",
            code="method_not_allowed",
            status_code=405,
        )
    if first == "chat":
        # Stored chat completions live in the upstream account every tenant shares.
        raise NotFound(f"{request.method} {request.url.path} is not available through this proxy")
    return await passthrough_direct(request)


async def forward(
    request: Request, services: Services, *, plain: bool = False, lease: Lease | None = None
) -> Response:
    """Forward the request as it is; `plain` asks the upstream for an uncompressed answer. With a
    quota `lease`, the answer's tokens are counted (a JSON answer's `usage`, a stream's events) and
    the lease is given back when the answer has been relayed."""
    if lease is not None and not lease.active:
        lease = None
    try:
        return await _forward(request, services, plain=plain or lease is not None, lease=lease)
    except BaseException:
        if lease is not None:
            await lease.release()
        raise


async def _forward(request: Request, services: Services, *, plain: bool, lease: Lease | None) -> Response:
    path = request.url.path
    label = route_label(path)
    target = openai_target(services.settings)
    if target is None:
        services.metrics.route_requests.labels(label, "passthrough", "refused").inc()
        raise NotFound(
            f"{path} is passed through to an OpenAI-compatible upstream, and none is configured "
            "(PERSONA_UPSTREAM_API_BASE)"
        )
    body = BodyStream(request)
    headers = forwarded_request_headers(request.headers.items())
    if plain:
        headers["accept-encoding"] = "identity"
    # The path as the client encoded it (an id with %2F stays one segment upstream).
    raw_path = request.scope.get("raw_path")
    wire_path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else path
    try:
        upstream = await forwarder(request, services).open(
            target,
            request.method,
            wire_path.removeprefix("/v1"),
            request.url.query,
            headers,
            await body.open(),
        )
    except ClientDisconnected:
        services.metrics.client_disconnects.inc()
        return Response(status_code=499)
    except Exception:
        services.metrics.route_requests.labels(label, "passthrough", "error").inc()
        if body.too_large:
            raise PayloadTooLarge(
                f"request body larger than {services.settings.max_body_bytes} bytes"
            ) from None
        raise
    services.metrics.route_requests.labels(label, "passthrough", f"{upstream.status // 100}xx").inc()
    if lease is None:
        return relayed_response(upstream)
    if upstream.headers.get("content-type", "").startswith("application/json"):
        # a whole JSON answer (embeddings, completions): read it to count its usage
        data = b"".join([chunk async for chunk in body_chunks(upstream)])
        lease.settle(data)
        return relayed_whole(upstream, data)
    return relayed_response(upstream, wrap=lease.guard_stream)
