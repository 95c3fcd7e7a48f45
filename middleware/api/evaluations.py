"""Online own / other / baseline evaluation runs (middleware/evaluation/online_service.py).

Admin (admin key + X-Persona-Tenant):
    POST /admin/evaluations                       {"users": [...], "model", "name"?} -> the run
    GET  /admin/evaluations                       the tenant's runs
    GET  /admin/evaluations/{id}                  the run and its progress per user
    POST /admin/evaluations/{id}/close | /reopen  stop (or resume) accepting trials
    GET  /admin/evaluations/{id}/trials           every trial with its conditions (for analysis)
    GET  /admin/evaluations/{id}/report           JSON report; `?format=png` for the chart
    GET  /admin/evaluations/{id}/report.png       the chart

App (app key; the user is `user` in the body or the X-Persona-User header):
    GET  /v1/evaluations/{id}?user=               name, status and the user's own progress
    POST /v1/evaluations/{id}/trials              {"user", "messages", "idempotency_key"?} -> {"id", "answers": [A, B, C]}
                                                  (an Idempotency-Key header or field: a retry finds the
                                                  trial the first attempt stored, 200, no new upstream call)
    POST /v1/evaluations/{id}/trials/{trial_id}/choice   {"choice": "A"|"B"|"C"|"tie"|"skip", "rationale"?}
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from middleware.api.deps import AdminTenant, AppTenant, ServicesDep, caller_user
from middleware.api.responses import JSONBytes
from middleware.evaluation.online import CONDITIONS
from middleware.evaluation.online_plot import render_png
from middleware.idempotency import MAX_KEY_CHARS, fingerprint, request_key
from middleware.identity import validate_user_id
from middleware.models import Message

admin_router = APIRouter(prefix="/admin/evaluations", tags=["evaluations"])
app_router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])
router = APIRouter()

EvaluationPath = Annotated[str, Path(pattern=r"^ev_[0-9a-f]{32}$", description="evaluation run id")]
TrialPath = Annotated[str, Path(pattern=r"^trl_[0-9a-f]{32}$", description="trial id")]


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: list[str] = Field(min_length=2, max_length=10_000)
    model: str = Field(min_length=1, max_length=200)
    name: str | None = Field(default=None, max_length=200)


class TrialCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(default=None, description="end-user id (or the X-Persona-User header)")
    messages: list[Message] = Field(min_length=1, max_length=500)
    max_tokens: int | None = Field(default=None, ge=1, le=65_536)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_CHARS)


class ChoiceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    choice: Literal["A", "B", "C", "tie", "skip"]
    rationale: str | None = Field(default=None, max_length=20_000)
    user: str | None = None


# --- admin ----------------------------------------------------------------------------------------
@admin_router.post("")
async def create_evaluation(body: EvaluationCreate, tenant: AdminTenant, services: ServicesDep) -> Response:
    users = [validate_user_id(u, param="users") for u in body.users]
    run = await services.evaluations.create_run(tenant, users=users, model=body.model, name=body.name)
    return JSONBytes(run, status_code=201)


@admin_router.get("")
async def list_evaluations(tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    return {"object": "list", "data": await services.evaluations.list_runs(tenant)}


@admin_router.get("/{evaluation_id}")
async def get_evaluation(
    evaluation_id: EvaluationPath, tenant: AdminTenant, services: ServicesDep
) -> dict[str, Any]:
    return await services.evaluations.status(tenant, evaluation_id)


@admin_router.post("/{evaluation_id}/close")
async def close_evaluation(
    evaluation_id: EvaluationPath, tenant: AdminTenant, services: ServicesDep
) -> dict[str, Any]:
    return await services.evaluations.set_status(tenant, evaluation_id, "closed")


@admin_router.post("/{evaluation_id}/reopen")
async def reopen_evaluation(
    evaluation_id: EvaluationPath, tenant: AdminTenant, services: ServicesDep
) -> dict[str, Any]:
    return await services.evaluations.set_status(tenant, evaluation_id, "open")


@admin_router.get("/{evaluation_id}/trials")
async def list_trials(
    evaluation_id: EvaluationPath, tenant: AdminTenant, services: ServicesDep
) -> dict[str, Any]:
    trials = await services.evaluations.trials(tenant, evaluation_id)
    return {"object": "list", "evaluation_id": evaluation_id, "data": trials}


async def _png(report: dict[str, Any]) -> Response:
    png = await asyncio.to_thread(render_png, report)
    return Response(png, media_type="image/png")


@admin_router.get("/{evaluation_id}/report")
async def get_report(
    evaluation_id: EvaluationPath,
    tenant: AdminTenant,
    services: ServicesDep,
    format: Annotated[Literal["json", "png"], Query()] = "json",
    seed: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    report = await services.evaluations.report(tenant, evaluation_id, seed=seed)
    return await _png(report) if format == "png" else JSONBytes(report)


@admin_router.get("/{evaluation_id}/report.png")
async def get_report_png(
    evaluation_id: EvaluationPath,
    tenant: AdminTenant,
    services: ServicesDep,
    seed: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    return await _png(await services.evaluations.report(tenant, evaluation_id, seed=seed))


# --- app ------------------------------------------------------------------------------------------
@app_router.get("/{evaluation_id}")
async def member_view(
    evaluation_id: EvaluationPath,
    request: Request,
    tenant: AppTenant,
    services: ServicesDep,
    user: str | None = None,
) -> dict[str, Any]:
    """For a user of the run: its name and status and the user's own progress (nothing else)."""
    end_user = caller_user(request, user, required=True)
    assert end_user is not None
    return await services.evaluations.member_view(tenant, evaluation_id, end_user)


@app_router.post("/{evaluation_id}/trials")
async def create_trial(
    evaluation_id: EvaluationPath,
    body: TrialCreate,
    request: Request,
    tenant: AppTenant,
    services: ServicesDep,
) -> Response:
    user = caller_user(request, body.user, required=True)
    assert user is not None
    extra = {
        k: v for k, v in (("max_tokens", body.max_tokens), ("temperature", body.temperature)) if v is not None
    }
    quotas = services.quotas
    quotas.check_body(tenant, extra)
    messages = [m.model_dump(mode="json", exclude_none=True) for m in body.messages]
    key = request_key(request.headers.get("idempotency-key"), body.idempotency_key)
    request_hash = fingerprint({"messages": messages, **extra}) if key is not None else None
    if key is not None and request_hash is not None:
        stored = await services.evaluations.replay_trial(tenant, evaluation_id, user, key, request_hash)
        if stored is not None:  # a retry: what the first attempt stored, no new upstream call
            return JSONBytes(stored, status_code=200)
    lease = await quotas.admit(tenant, user, len(CONDITIONS))  # one upstream call per condition
    try:
        trial = await services.evaluations.create_trial(
            tenant,
            evaluation_id,
            user=user,
            messages=messages,
            extra=extra,
            idempotency_key=key,
            request_hash=request_hash,
        )
    finally:
        await lease.release()
    return JSONBytes(trial, status_code=201)


@app_router.post("/{evaluation_id}/trials/{trial_id}/choice")
async def choose(
    evaluation_id: EvaluationPath,
    trial_id: TrialPath,
    body: ChoiceIn,
    request: Request,
    tenant: AppTenant,
    services: ServicesDep,
) -> Response:
    user = caller_user(request, body.user, required=False)
    result = await services.evaluations.choose(
        tenant, evaluation_id, trial_id, choice=body.choice, rationale=body.rationale, user=user
    )
    return JSONBytes(result, status_code=201)


router.include_router(admin_router)
router.include_router(app_router)
