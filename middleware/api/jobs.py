"""GET /admin/jobs/{id}: state, progress and result of a background job; POST …/cancel stops it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from middleware.api.deps import AdminTenant, ServicesDep
from middleware.errors import NotFound
from middleware.induction.queue import JobQueue

router = APIRouter(prefix="/admin/jobs", tags=["admin"])
JobPath = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="job id")]
PUBLIC = (
    "id",
    "kind",
    "user",
    "segment",
    "state",
    "progress",
    "result",
    "error",
    "attempts",
    "model",
    "reason",
    "created_at",
    "started_at",
    "finished_at",
)


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The record as shown; `segment` only for a segment's job."""
    return {k: record.get(k) for k in PUBLIC if k != "segment" or record.get("segment")}


async def tenant_job(job_id: str, tenant: str, jobs: JobQueue) -> dict[str, Any]:
    record = await jobs.get(job_id)
    # Another tenant's job is indistinguishable from a missing one.
    if record is None or record.get("tenant") != tenant:
        raise NotFound(f"job {job_id!r} not found")
    return record


@router.get("/{job_id}")
async def get_job(job_id: JobPath, tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    return public(await tenant_job(job_id, tenant, services.jobs))


@router.post("/{job_id}/cancel")
async def cancel_job(job_id: JobPath, tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    """Cancel a queued or running job; the current persona stays as it is."""
    await tenant_job(job_id, tenant, services.jobs)
    record = await services.jobs.cancel(job_id)
    if record is None:
        raise NotFound(f"job {job_id!r} not found")
    return public(record)
