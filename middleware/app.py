"""create_app(settings): the ASGI application. The lifespan owns Redis, the HTTP client, the queue."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException

from middleware import __version__
from middleware.api import (
    admin,
    chat,
    comparisons,
    evaluations,
    health,
    jobs,
    messages,
    openai_responses,
    passthrough,
    preferences,
    ui,
    ui_evaluate,
    users,
)
from middleware.api.paths import PathNormalizer
from middleware.api.responses import JSONBytes
from middleware.config import Settings
from middleware.errors import InvalidJSON, PersonaError, ValidationFailed
from middleware.induction.queue import JobQueue
from middleware.limits import BodySizeLimit
from middleware.rerank.registry import RerankerRegistry
from middleware.rerank.resources import RerankResources
from middleware.services import build_services

log = logging.getLogger("middleware")


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings)
        resources = RerankResources(services.upstreams, services.personas, services.redis)
        services.extras["rerankers"] = RerankerRegistry(settings, resources).load_entry_points()
        app.state.services = services
        services.extras["jobs"] = JobQueue(settings, services.redis)
        if not settings.admin_key.get_secret_value():
            log.warning("PERSONA_ADMIN_KEY is not set: admin routes are open (development only)")
        # Long-lived start-up objects leave the collector's young generations: fewer, shorter pauses.
        gc.freeze()
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(
        title="persona-middleware",
        version=__version__,
        lifespan=lifespan,
        default_response_class=JSONBytes,
        # No OpenTelemetry hooks on the hot path unless an operator wires them in explicitly.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    for module in (health, chat, openai_responses, messages, admin, comparisons, preferences, users, jobs):
        app.include_router(module.router)
    for module in (ui, evaluations, ui_evaluate, passthrough):  # passthrough last: it is a catch-all
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(PathNormalizer)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["*"],
        )
    return app


def install_error_handlers(app: FastAPI) -> None:
    """One handler per family: our errors, schema errors, and Starlette's routing errors."""

    @app.exception_handler(PersonaError)
    async def persona_error(_: Request, exc: PersonaError) -> JSONBytes:
        return JSONBytes(exc.to_body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONBytes:
        errors = exc.errors()
        first: dict[str, Any] = errors[0] if errors else {}
        location = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            invalid = InvalidJSON(f"the request body is not valid JSON: {first.get('msg', '')}")
            return JSONBytes(invalid.to_body(), status_code=invalid.status_code)
        message = f"{location}: {first.get('msg', 'invalid value')}" if location else first.get("msg", "")
        failed = ValidationFailed(message or "invalid request", param=location or None)
        return JSONBytes(failed.to_body(), status_code=failed.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONBytes:
        kinds = {404: "not_found_error", 405: "invalid_request_error"}
        body = PersonaError(
            str(exc.detail), error_type=kinds.get(exc.status_code, "api_error"), code=None
        ).to_body()
        return JSONBytes(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))
