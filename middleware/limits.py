"""Pure ASGI middleware that checks every request body before any route runs.

- Over the size limit: 413, whether the length is declared (refused before reading) or the body is
  chunked (counted as it arrives, refused as soon as it passes the limit).
- Not UTF-8, not JSON, nested deeper than the JSON depth limit or holding an integer beyond 64 bits:
  400 (`middleware.json_limits`). Every route of ours that takes a body speaks JSON.
A JSON body is read once here and replayed to the app; later `receive` calls (the client's disconnect)
go straight to the server. Any other body (multipart uploads, audio, files for the pass-through
routes) streams on untouched and is only counted: past the limit the app's next read raises 413.
Errors on the Anthropic Messages route take Anthropic's shape, as everything else on that route.
"""

from __future__ import annotations

from typing import Any

import orjson

from middleware.errors import PayloadTooLarge, PersonaError
from middleware.json_limits import MAX_DEPTH, check_body

Scope = dict[str, Any]
PARSED_BODY = "parsed_json_body"  # the request state's name for the body this guard decoded
Message = dict[str, Any]


class BodyGuard:
    def __init__(self, app: Any, max_bytes: int, max_depth: int = MAX_DEPTH) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        chunked, json_body = False, True
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-type":
                kind = value.lower()
                json_body = b"json" in kind or kind.startswith(b"text/plain")
        if declared is None and not chunked:  # no body at all
            await self.app(scope, receive, send)
            return
        if declared is not None and declared > self.max_bytes:
            await _refuse(send, PayloadTooLarge(self._too_large()), scope)
            return
        if not json_body:
            await self.app(scope, self._counting(receive), send)
            return
        chunks: list[bytes] = []
        received = 0
        more = True
        while more:
            message: Message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await _refuse(send, PayloadTooLarge(self._too_large()), scope)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        if body and json_body:
            try:
                # routes that read the raw body take the decoded value from here: one parse a request
                scope.setdefault("state", {})[PARSED_BODY] = check_body(body, max_depth=self.max_depth)
            except PersonaError as error:
                await _refuse(send, error, scope)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            message: Message = await receive()
            return message

        await self.app(scope, replay, send)

    def _counting(self, receive: Any) -> Any:
        """`receive` that counts a streamed body and raises 413 once it passes the limit."""
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message: Message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._too_large())
            return message

        return counting_receive

    def _too_large(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"


ANTHROPIC_ROUTES = ("/v1/messages", "/messages")


def _anthropic_body(error: PersonaError) -> dict[str, Any]:
    kind = error.error_type if error.status_code != 413 else "request_too_large"
    return {"type": "error", "error": {"type": kind, "message": error.message}}


async def _refuse(send: Any, error: PersonaError, scope: Scope) -> None:
    path = str(scope.get("path", "")).rstrip("/")
    anthropic = any(path == route or path.startswith(route + "/") for route in ANTHROPIC_ROUTES)
    body = orjson.dumps(_anthropic_body(error) if anthropic else error.to_body())
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
