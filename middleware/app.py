"""create_app(settings): the ASGI application. The lifespan builds and closes its `Services`."""

from __future__ import annotations

import gc
import logging
import os
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
    feedback,
    health,
    jobs,
    messages,
    openai_responses,
    passthrough,
    policy,
    preferences,
    segments,
    ui,
    ui_evaluate,
    user_tokens,
    users,
)
from middleware.api.docs import install_docs, openapi_url
from middleware.api.fast_path import LeanApp
from middleware.api.paths import PathNormalizer
from middleware.api.responses import JSONBytes
from middleware.config import Settings
from middleware.errors import InvalidJSON, PersonaError, ValidationFailed
from middleware.limits import BodyGuard
from middleware.services import build_services
from middleware.tracing import TracedRequests, Tracing

log = logging.getLogger("middleware")


def create_app(settings: Settings, tracing: Tracing | None = None) -> FastAPI:
    """The app; `tracing` defaults to what the process's OTEL_* environment asks for (off when unset)."""
    if tracing is None:
        tracing = Tracing.from_environ(os.environ, user_ids=settings.trace_user_ids)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, tracing)
        app.state.services = services
        if not settings.admin_key.get_secret_value():
            log.warning("PERSONA_ADMIN_KEY is not set: admin routes are open (development only)")
        # Long-lived start-up objects leave the collector's young generations: fewer, shorter pauses.
        gc.freeze()
        services.metrics.started()
        try:
            yield
        finally:
            services.metrics.stopped()
            await services.close()
            tracing.shutdown()

    # The chat-like POST routes skip FastAPI's routing and dependency layers (api/fast_path.py).
    app = LeanApp(
        title="persona-middleware",
        version=__version__,
        lifespan=lifespan,
        default_response_class=JSONBytes,
        # FastAPI's own OpenTelemetry hooks stay off: the spans are middleware/tracing.py's (OTEL_* settings).
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # A path with a trailing slash is a 404, never a redirect built from the Host header.
        redirect_slashes=False,
        docs_url=None,  # /docs and /redoc are served by install_docs, with local assets
        redoc_url=None,
        openapi_url=openapi_url(settings),
    )
    app.state.settings = settings
    for module in (health, chat, openai_responses, messages):
        app.include_router(module.router)
    app.include_router(passthrough.direct_router)  # the busiest passed-through resources, matched early
    for module in (user_tokens, admin, segments, comparisons, preferences):
        app.include_router(module.router)
    app.include_router(feedback.router)
    # passthrough last: a catch-all
    for module in (users, policy, jobs, ui, evaluations, ui_evaluate, passthrough):
        app.include_router(module.router)
    install_docs(app, settings)
    install_error_handlers(app)
    if tracing.enabled:  # innermost: its scope is the one the router names the matched route in
        app.add_middleware(TracedRequests, tracing=tracing)
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes)
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


_HTTP_ERRORS = {
    400: ("invalid_request_error", "invalid_body"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
}


def install_error_handlers(app: FastAPI) -> None:
    """One handler per family: our errors, schema errors, and Starlette's routing errors."""

    @app.exception_handler(PersonaError)
    async def persona_error(_: Request, exc: PersonaError) -> JSONBytes:
        return JSONBytes(exc.to_body(), status_code=exc.status_code, headers=dict(exc.headers) or None)

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

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONBytes:
        log.error("unhandled error", exc_info=exc)
        body = PersonaError("internal error", code="internal_error").to_body()
        return JSONBytes(body, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONBytes:
        error_type, code = _HTTP_ERRORS.get(exc.status_code, ("invalid_request_error", "invalid_request"))
        if exc.status_code >= 500:
            error_type, code = "api_error", "internal_error"
        body = PersonaError(str(exc.detail), error_type=error_type, code=code).to_body()
        return JSONBytes(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))
