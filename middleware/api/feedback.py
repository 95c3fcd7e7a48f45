"""POST /v1/feedback: signals about answers (`x-persona-response-id`), one object or a list of them.

An app key (the X-Persona-User header, when given, must be the answer's user) or an end-user token
(its own answers only). An answer that is unknown, expired, or another tenant's or user's: 404; a
signal type not enabled: 422. Retries are safe (`idempotency_key`, else the same content counts
once); 201 when something new was stored, 200 when everything was already there; 503 when Redis is
down, with nothing half-counted (see `FeedbackService`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from middleware.api.deps import AppTenant, ServicesDep, batch, caller_user
from middleware.api.responses import JSONBytes
from middleware.feedback.signals import SignalIn
from middleware.induction.triggers import refresh_if_due

router = APIRouter(tags=["feedback"])
MAX_BATCH = 100


@router.post("/v1/feedback")
async def send_feedback(
    body: SignalIn | list[SignalIn], request: Request, tenant: AppTenant, services: ServicesDep
) -> Response:
    items = batch(body, MAX_BATCH, "signals")
    user = caller_user(request, None, required=False)
    results = await services.feedback.send(tenant, user, items)
    created = sum(r.created for r in results)
    with_pairs = sorted({r.user for r in results if r.implied_pairs})
    if with_pairs:
        await refresh_if_due(services.settings, services.preferences, services.jobs, tenant, with_pairs)
    return JSONBytes(
        {"object": "list", "data": [r.as_json() for r in results], "created": created},
        status_code=201 if created else 200,
    )
