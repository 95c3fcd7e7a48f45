"""Operator routes for one user: refresh the persona (a background job), forget, export.

All need the admin key; the tenant is named by X-Persona-Tenant, and a tenant only ever reaches
its own users (every key is built from the tenant).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from middleware.api.deps import AdminTenant, ServicesDep, UserPath
from middleware.api.responses import JSONBytes, job_accepted
from middleware.errors import NotEnoughData
from middleware.privacy import export_everything, forget_everything

router = APIRouter(prefix="/admin/users", tags=["admin"])


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, max_length=200, description="LLM used for induction")


@router.post("/{user}/persona/refresh", status_code=202)
async def refresh(
    user: UserPath,
    tenant: AdminTenant,
    services: ServicesDep,
    body: Annotated[RefreshIn | None, Body()] = None,
) -> JSONBytes:
    """Queue a persona refresh; 202 with the job id (an already pending refresh is reused)."""
    pairs = await services.preferences.pair_count(tenant, user)
    minimum = services.settings.induction_min_pairs
    if pairs < minimum:
        raise NotEnoughData(
            f"not enough data: user {user!r} has {pairs} preference pairs, a persona needs at least "
            f"{minimum}",
            param="user",
        )
    job_id, created = await services.jobs.enqueue_refresh(tenant, user, model=body.model if body else None)
    return job_accepted(job_id, created)


@router.delete("/{user}")
async def forget(user: UserPath, tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    """Forget the user entirely: personas, versions, preferences, adapters, comparisons, jobs,
    evaluation trials; and this process's cached reranker state of the user."""
    result = await forget_everything(services.redis, tenant, user, services.jobs_redis)
    services.rerankers.forget(tenant, user)
    return result


@router.get("/{user}/export")
async def export(user: UserPath, tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    """Everything stored about the user."""
    return await export_everything(services.redis, tenant, user)
