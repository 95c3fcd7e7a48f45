"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from middleware.api.deps import ServicesDep
from middleware.api.responses import JSONBytes
from middleware.store.connection import reachable

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> Response:
    if not await reachable(services.redis, timeout_s=1.0):
        return JSONBytes({"status": "unavailable", "redis": "down"}, status_code=503)
    return JSONBytes({"status": "ok", "redis": "up"})


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")
