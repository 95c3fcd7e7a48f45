"""POST /v1/preferences: pairwise feedback from apps, one object or a list of them.

An `Idempotency-Key` header (single object) or `idempotency_key` per item makes retries safe;
without one, identical feedback is stored once (content-derived ids). 201 when something new was
stored, 200 when everything was already there; 503 when Redis is down (nothing is dropped silently).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from middleware.api.deps import AppTenant, ServicesDep, batch, caller_user, token_user
from middleware.api.responses import JSONBytes
from middleware.identity import bind_user, validate_user_id
from middleware.induction.triggers import refresh_if_due
from middleware.preferences.feedback import FeedbackIn, add_feedback, to_record

router = APIRouter(tags=["preferences"])
MAX_BATCH = 1000


@router.post("/v1/preferences")
async def add_preferences(
    body: FeedbackIn | list[FeedbackIn], request: Request, tenant: AppTenant, services: ServicesDep
) -> Response:
    items = batch(body, MAX_BATCH, "preferences")
    header_key = request.headers.get("idempotency-key")
    records = []
    for i, item in enumerate(items):
        # In a batch each item names its own user; the header is the fallback.
        user = (
            bind_user(token_user(request), validate_user_id(item.user))
            if item.user
            else caller_user(request, None, required=True)
        )
        assert user is not None
        key = item.idempotency_key
        if key is None and header_key:
            key = header_key if len(items) == 1 else f"{header_key}:{i}"
        record_id, _, data = to_record(item, user, key, request.headers.get("x-persona-context"))
        records.append((user, record_id, data))
    flags = await add_feedback(services.preferences, tenant, records)
    listing = [{"id": r[1], "user": r[0], "created": f} for r, f in zip(records, flags, strict=True)]
    created = sum(flags)
    if created:
        await refresh_if_due(
            services.settings,
            services.preferences,
            services.jobs,
            tenant,
            [r[0] for r, f in zip(records, flags, strict=True) if f],
        )
    return JSONBytes(
        {"object": "list", "data": listing, "created": created, "duplicates": len(flags) - created},
        status_code=201 if created else 200,
    )
