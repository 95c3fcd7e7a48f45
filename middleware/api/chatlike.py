"""Answering a chat-like call: one place for its headers, metrics, streaming and client disconnects.

Every route that answers like a chat (chat completions, in any persona mode) hands its work here:

- `x-persona-version` and `x-persona-overhead-ms` headers, and the overhead metric (the time the proxy
  spent before the work started upstream);
- the work runs cancelled as soon as the client goes away (499, counted);
- `persona_chat_requests{mode, outcome}`: "ok", "stream", "error" or the outcome the work names;
- a stream goes back as it arrives, anything else as one body.

The route says how its answers are framed (`Framing`: media types, and how an error becomes a
response when the route does not use the app's OpenAI-shaped error handler).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from middleware.errors import PersonaError
from middleware.metrics import Metrics
from middleware.quotas.service import Lease
from middleware.upstream import ClientDisconnected, cancel_on_disconnect, monotonic_ms

VERSION_HEADER = "x-persona-version"
OVERHEAD_HEADER = "x-persona-overhead-ms"
ARM_HEADER = "x-persona-arm"
CLIENT_CLOSED_REQUEST = 499


@dataclass(frozen=True)
class Framing:
    """How a route frames its answers."""

    media_type: str = "application/json"
    stream_media_type: str = "text/event-stream"
    # How a failure becomes a response; None: raised to the app's handler (OpenAI's error shape).
    error_response: Callable[[PersonaError], Response] | None = None


OPENAI_CHAT = Framing()


@dataclass
class Answer:
    """What a chat-like call's work produced: a whole body or a stream, its own headers, its outcome."""

    body: bytes | AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    outcome: str | None = None  # the metric's outcome label; by default "stream" or "ok"


def persona_headers(version: int | None, overhead_ms: float) -> dict[str, str]:
    return {
        VERSION_HEADER: str(version) if version is not None else "none",
        OVERHEAD_HEADER: f"{overhead_ms:.3f}",
    }


async def answer(
    request: Request,
    metrics: Metrics,
    work: Awaitable[bytes | AsyncIterator[bytes] | Answer],
    *,
    mode: str,
    persona_version: int | None,
    started: float,
    framing: Framing = OPENAI_CHAT,
    lease: Lease | None = None,
    relay: Mapping[str, str] | None = None,
    arm: str | None = None,
) -> Response:
    """Run `work` (not yet started; `started` is the call's perf_counter() at arrival) and answer.

    With a quota `lease`, the answer's tokens are counted (a stream's as it passes) and the lease is
    released when the answer is complete or the call failed. `relay` holds the upstream headers the
    app must see (filled by the upstream call as it runs). `arm`: the auto mode's choice, sent back
    in `x-persona-arm`."""
    overhead_ms = monotonic_ms(started)
    metrics.overhead_seconds.observe(overhead_ms / 1000.0)
    headers = persona_headers(persona_version, overhead_ms)
    if arm is not None:
        headers[ARM_HEADER] = arm
    try:
        result = await cancel_on_disconnect(request.receive, work)
    except ClientDisconnected:
        metrics.client_disconnects.inc()
        if lease is not None:
            await lease.release()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except PersonaError as exc:
        metrics.chat_requests.labels(mode, "error").inc()
        if lease is not None:
            await lease.release()
        if framing.error_response is None:
            raise
        return framing.error_response(exc)
    except BaseException:
        metrics.chat_requests.labels(mode, "error").inc()
        if lease is not None:
            await lease.release()
        raise
    if not isinstance(result, Answer):
        result = Answer(result)
    streamed = not isinstance(result.body, bytes)
    metrics.chat_requests.labels(mode, result.outcome or ("stream" if streamed else "ok")).inc()
    if relay:
        headers.update(relay)
    if result.headers:
        headers.update(result.headers)
    if isinstance(result.body, bytes):
        if lease is not None and lease.active:
            await lease.settle(result.body)
        return Response(result.body, media_type=framing.media_type, headers=headers)
    body = result.body
    if lease is not None and lease.active:
        body = lease.guard_stream(body)
    return StreamingResponse(body, media_type=framing.stream_media_type, headers=headers)
