"""A lean dispatch for the chat-like POST routes, in front of the FastAPI stack.

The proxy's busiest routes (`POST /v1/chat/completions`, `/v1/responses`, `/v1/messages`, and the same
without `/v1`) take only the `Request` and build their answers themselves (`api/chatlike.py`), so the
layers FastAPI puts between the server and them (its routing, dependency resolution, exception and
exit-stack middleware) do nothing for them but cost time on every call. An exact match of method and
path goes here instead:

    the app's server-error handler -> the app's own middleware (CORS when configured, path
    normalization, the body guard, anything added later), unchanged -> the route's endpoint, its
    errors turned into responses by the app's exception handlers

Everything else (other methods, other paths, a trailing slash, websockets, lifespan) falls through to
FastAPI unchanged. A route is only taken when FastAPI itself would pick it for that path (the first
route that matches) and its endpoint takes nothing but the request; the OpenAPI description is the
app's own, since the routes stay registered there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from inspect import isawaitable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, ExceptionHandler, HTTPExceptionHandler, Receive, Scope, Send

from middleware.api.paths import ROOT_API_SEGMENTS

# The chat-like routes served by the lean dispatch.
LEAN_ROUTES = ("/v1/chat/completions", "/v1/responses", "/v1/messages")

Endpoint = Callable[[Request], Awaitable[Any]]


class LeanApp(FastAPI):
    """FastAPI with the lean dispatch in front of its middleware stack."""

    def build_middleware_stack(self) -> ASGIApp:
        return LeanDispatch(self, super().build_middleware_stack())


def lean_endpoints(app: FastAPI) -> dict[str, tuple[APIRoute, Endpoint]]:
    """The chat-like routes FastAPI would answer a POST to each `LEAN_ROUTES` path with, where the
    endpoint takes the request alone (anything else stays with FastAPI)."""
    found: dict[str, tuple[APIRoute, Endpoint]] = {}
    for path in LEAN_ROUTES:
        route = _first_match(
            app.router.routes, {"type": "http", "method": "POST", "path": path, "root_path": ""}
        )
        if isinstance(route, APIRoute) and route.path == path and _request_only(route):
            found[path] = (route, route.endpoint)
    return found


def _first_match(routes: Sequence[BaseRoute], probe: Scope) -> BaseRoute | None:
    """The route the router picks for `probe` (the first full match, looked for inside included
    routers too)."""
    for route in routes:
        match, _ = route.matches(probe)
        if match is Match.FULL:
            included = getattr(route, "original_router", None)  # an included router: its own routes
            return _first_match(included.routes, probe) if included is not None else route
    return None


def _request_only(route: APIRoute) -> bool:
    dependant = route.dependant
    return (
        dependant.request_param_name is not None
        and not dependant.dependencies
        and not dependant.path_params
        and not dependant.query_params
        and not dependant.header_params
        and not dependant.cookie_params
        and not dependant.body_params
        and not route.response_model
    )


class LeanDispatch:
    def __init__(self, app: FastAPI, full: ASGIApp) -> None:
        self.full = full
        self.endpoints = lean_endpoints(app)
        # A POST to one of these raw paths (before path normalization) takes the lean dispatch.
        self.paths = frozenset(self.endpoints) | frozenset(
            path[3:] for path in self.endpoints if path[4:].split("/", 1)[0] in ROOT_API_SEGMENTS
        )
        error_handler: ExceptionHandler | None = None
        self.handlers: dict[type[Exception], HTTPExceptionHandler] = {}
        for key, value in app.exception_handlers.items():
            if key in (500, Exception):
                error_handler = value
            elif isinstance(key, type):
                self.handlers[key] = value
        lean: ASGIApp = self.dispatch
        for cls, args, kwargs in reversed(app.user_middleware):
            lean = cls(lean, *args, **kwargs)
        # The outermost layer as in FastAPI's stack: an unhandled error answers 500, then is raised.
        self.lean = ServerErrorMiddleware(lean, handler=error_handler, debug=app.debug)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            await self.lean(scope, receive, send)
        else:
            await self.full(scope, receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The route's endpoint, for the normalized path; its errors go to the app's handlers."""
        route, endpoint = self.endpoints[scope["path"]]
        scope["route"] = route
        scope["endpoint"] = endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = handler(request, exc)
            if isawaitable(response):
                response = await response
            await response(scope, receive, send)
            return
        try:
            await response(scope, receive, send)
        except Exception as exc:
            # As FastAPI's exception middleware: too late for a handler once the answer started.
            if self._handler(exc) is not None:
                raise RuntimeError("Caught handled exception, but response already started.") from exc
            raise

    def _handler(self, exc: Exception) -> HTTPExceptionHandler | None:
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler
        return None
