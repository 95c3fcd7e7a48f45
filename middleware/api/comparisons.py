"""Four-way comparisons: create (optionally streamed as NDJSON), judge, and read a session.

    POST /v1/comparisons                   {"user", "model", "messages", "variants"?, "session_id"?,
                                            "persona"?, "max_tokens"?, "stream"?, "idempotency_key"?}
    POST /v1/comparisons/{id}/judgement    {"best", "worst", "rationale"}
    GET  /v1/sessions/{session_id}         the session's best-only history

With `"stream": true` the answer is NDJSON: a `comparison` line (id, variants), one `candidate` line
per candidate as soon as it is ready, then `done` (the stored comparison) or `error`.

An `Idempotency-Key` header (or `idempotency_key`) makes a retried creation safe: the comparison's id
comes from the key, and a retry finds the comparison the first attempt stored (the same body, no new
upstream calls) instead of creating another one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from middleware.api.chatlike import context_tag
from middleware.api.deps import AppTenant, ServicesDep, caller_user
from middleware.api.responses import JSONBytes
from middleware.candidates.generate import Candidate
from middleware.candidates.variants import Variant
from middleware.collection.service import ComparisonService, Prepared
from middleware.errors import PersonaError
from middleware.idempotency import MAX_KEY_CHARS, fingerprint, request_key
from middleware.induction.triggers import refresh_if_due
from middleware.models import Message
from middleware.quotas.service import Lease, Quotas
from middleware.upstream import ClientDisconnected, cancel_on_disconnect

log = logging.getLogger("middleware.api")
router = APIRouter(tags=["comparisons"])

ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
SessionId = Annotated[str, Field(pattern=ID_PATTERN, description="client-chosen session id")]


class ComparisonCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(default=None, description="end-user id (or the X-Persona-User header)")
    model: str = Field(min_length=1, max_length=200)
    messages: list[Message] = Field(min_length=1, max_length=500)
    variants: list[Variant] | None = Field(default=None, min_length=2, max_length=8)
    session_id: SessionId | None = None
    persona: bool = Field(default=True, description="inject the user's persona into every candidate")
    max_tokens: int | None = Field(default=None, ge=1, le=65_536)
    stream: bool = False
    metadata: dict[str, Any] | None = Field(
        default=None, description='{"context": "<tag>"}: the context of the comparison (README "Contexts")'
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_CHARS)


class JudgementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    best: int = Field(ge=0)
    worst: int = Field(ge=0)
    rationale: str = Field(default="", max_length=20_000)
    user: str | None = None


@router.post("/v1/comparisons")
async def create_comparison(
    body: ComparisonCreate, request: Request, tenant: AppTenant, services: ServicesDep
) -> Response:
    user = caller_user(request, body.user, required=True)
    assert user is not None
    service = services.comparisons
    off = request.headers.get("x-persona-mode", "").strip().lower() == "off"
    key = request_key(request.headers.get("idempotency-key"), body.idempotency_key)
    request_hash = None
    if key is not None:
        asked = body.model_dump(mode="json", exclude={"user", "stream", "idempotency_key"})
        request_hash = fingerprint({**asked, "persona": body.persona and not off})
        stored = await service.replay(tenant, user, key, request_hash)
        if stored is not None:  # a retry: what the first attempt stored, no new upstream call
            await services.quotas.keep_comparison(tenant, user, stored["id"], stored["expires_at"])
            if body.stream:
                return StreamingResponse(_replayed(stored), media_type="application/x-ndjson")
            return JSONBytes(stored)
    prepared = await service.prepare(
        tenant,
        user,
        model=body.model,
        messages=[m.model_dump(mode="json", exclude_none=True) for m in body.messages],
        variants=body.variants,
        session_id=body.session_id,
        persona=body.persona and not off,
        extra={"max_tokens": body.max_tokens} if body.max_tokens else {},
        context_tag=context_tag(request.headers, {"metadata": body.metadata}),
        idempotency_key=key,
        request_hash=request_hash,
    )
    quotas = services.quotas
    quotas.check_body(tenant, {"max_tokens": body.max_tokens})
    lease = await quotas.admit_comparison(
        tenant, user, prepared.id, variants=len(prepared.variants), ttl_s=services.settings.comparison_ttl_s
    )
    if body.stream:
        return StreamingResponse(_ndjson(service, prepared, quotas, lease), media_type="application/x-ndjson")
    try:
        result = await cancel_on_disconnect(request.receive, service.create(prepared))
    except BaseException as exc:
        await quotas.drop_comparison(tenant, user, prepared.id)
        if isinstance(exc, ClientDisconnected):
            return Response(status_code=499)
        raise
    finally:
        await lease.release()
    await quotas.add_usage(tenant, *(c.get("usage") for c in result["candidates"]))
    return JSONBytes(result)


def _line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event) + b"\n"


async def _replayed(stored: dict[str, Any]) -> AsyncIterator[bytes]:
    """A stored comparison as the NDJSON lines of its creation."""
    header = {k: v for k, v in stored.items() if k not in ("created", "expires_at", "candidates")}
    yield _line({"type": "comparison", **header})
    for candidate in stored["candidates"]:
        yield _line({"type": "candidate", "candidate": candidate})
    yield _line({"type": "done", "comparison": stored})


async def _ndjson(
    service: ComparisonService, prepared: Prepared, quotas: Quotas, lease: Lease
) -> AsyncIterator[bytes]:
    stored: dict[str, Any] | None = None
    finished: list[Candidate] = []
    try:
        yield _line({"type": "comparison", **prepared.header()})
        async for candidate in service.candidates(prepared):
            finished.append(candidate)
            yield _line({"type": "candidate", "candidate": candidate.to_dict()})
        try:
            stored = await service.store_pending(prepared, finished)
        except PersonaError as exc:
            yield _line({"type": "error", **exc.to_body(), "status": exc.status_code})
            return
        yield _line({"type": "done", "comparison": stored})
    finally:
        await lease.release()
        if stored is None:
            await quotas.drop_comparison(prepared.tenant, prepared.user, prepared.id)
        await quotas.add_usage(
            prepared.tenant, *(c.completion.get("usage") for c in finished if c.completion)
        )


@router.post("/v1/comparisons/{comparison_id}/judgement")
async def judge_comparison(
    comparison_id: Annotated[str, Path(pattern=ID_PATTERN)],
    body: JudgementIn,
    request: Request,
    tenant: AppTenant,
    services: ServicesDep,
) -> Response:
    user = caller_user(request, body.user, required=False)
    result = await services.comparisons.judge(
        tenant, user, comparison_id, best=body.best, worst=body.worst, rationale=body.rationale
    )
    await services.quotas.drop_comparison(tenant, result["user"], comparison_id)
    if result["pairs_added"]:
        await refresh_if_due(services.settings, services.preferences, services.jobs, tenant, [result["user"]])
    return JSONBytes(result, status_code=201)


@router.get("/v1/sessions/{session_id}")
async def get_session(
    session_id: Annotated[str, Path(pattern=ID_PATTERN)],
    request: Request,
    tenant: AppTenant,
    services: ServicesDep,
    user: str | None = None,
) -> Response:
    end_user = caller_user(request, user, required=True)
    assert end_user is not None
    messages = await services.comparisons.store.session_messages(tenant, end_user, session_id)
    return JSONBytes({"id": session_id, "object": "session", "user": end_user, "messages": messages})
