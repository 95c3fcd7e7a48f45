"""HTTP plumbing shared by the routes that relay upstream answers as they are (pass-through,
Responses, Messages): the request body as a stream, the upstream answer as an ASGI response."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from starlette.responses import Response, StreamingResponse

from middleware.errors import PayloadTooLarge, UpstreamError
from middleware.forward import RawForwarder, forwarded_response_headers, openai_stream_error, relay_body
from middleware.services import Services
from middleware.upstream import ClientDisconnected, UpstreamAnswer

_FORWARDER = "raw_forwarder"


def forwarder(request: Request, services: Services) -> RawForwarder:
    """The app's one RawForwarder (the upstream router's lean clients and the shared aiohttp
    session), made on first use."""
    found: RawForwarder | None = getattr(request.app.state, _FORWARDER, None)
    if found is None:
        found = RawForwarder(services.settings, services.http, services.upstreams)
        setattr(request.app.state, _FORWARDER, found)
    return found


class BodyStream:
    """The request body as it arrives: bytes when it came in one message, else an async iterator.

    `too_large` tells, after a failed upload, whether the size limit stopped it."""

    def __init__(self, request: Request) -> None:
        self._receive = request.receive
        self.too_large = False

    async def open(self) -> bytes | AsyncIterator[bytes]:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        first: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            return first
        return self._rest(first)

    async def _rest(self, first: bytes) -> AsyncIterator[bytes]:
        yield first
        more = True
        while more:
            try:
                message = await self._receive()
            except PayloadTooLarge:
                self.too_large = True
                raise
            if message["type"] == "http.disconnect":
                raise ClientDisconnected()
            yield message.get("body", b"")
            more = message.get("more_body", False)


class KnownLengthResponse(StreamingResponse):
    """An upstream answer of declared length, relayed chunk by chunk without a disconnect watcher
    (the upstream finishes it by itself; watching costs a task group per request)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.stream_response(send)


def relayed_response(
    upstream: UpstreamAnswer,
    extra_headers: dict[str, str] | None = None,
    error_frame: Callable[[UpstreamError], bytes] = openai_stream_error,
    wrap: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None = None,
) -> StreamingResponse:
    """The upstream's status, headers and body, relayed chunk by chunk (through `wrap` when given)."""
    content_type = upstream.headers.get("content-type", "")
    events = content_type.startswith("text/event-stream")
    kind = StreamingResponse if events or "content-length" not in upstream.headers else KnownLengthResponse
    body = relay_body(upstream, events, error_frame)
    response = kind(wrap(body) if wrap is not None else body, status_code=upstream.status)
    response.raw_headers = _raw_headers(upstream, extra_headers)
    return response


def relayed_whole(upstream: UpstreamAnswer, data: bytes) -> Response:
    """The upstream's status and headers with its body, already read whole (`data`)."""
    response = Response(data, status_code=upstream.status)
    response.raw_headers = _raw_headers(upstream, None)
    return response


def _raw_headers(upstream: UpstreamAnswer, extra: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    raw = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in forwarded_response_headers(upstream.headers.items())
    ]
    if extra:
        raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
    return raw
