"""Chat-like calls (chat completions, the Responses API, Anthropic Messages): one prelude, one answer.

`admit` is everything a chat-like route does before its own work, the same on every route:

- the caller: an app key -> its tenant, or an end-user token -> its tenant and the user it is bound to
  (`identity.app_caller`);
- the body, decoded once and checked by the route's own validator;
- the end user (`identity.end_user_id`; with a user token, naming anyone else is a 403);
- the persona mode (`X-Persona-Mode`; rerank only where the route offers it);
- the tenant's caps (`Quotas.check_body`) and admission (`Quotas.admit_and_personalize`: the quota
  check rides in the persona reads' round trip), which give a lease and the persona resolved as
  own > segment > tenant default > none (`personalize.resolve`; the segment from `X-Persona-Segment`
  or `metadata.segment`, else the user's assigned one).

`answer` runs the route's work and answers, the same on every route:

- `x-persona-version`, `x-persona-source` and `x-persona-overhead-ms` headers, and the overhead metric (the time the proxy
  spent before the work started upstream), plus the upstream's relayed headers;
- `x-persona-response-id`: the answer's id for `POST /v1/feedback`; its feedback record (the arm, the
  app's conversation as admitted, the answer) is written in the background once the body is known
  (a stream's text is collected as it passes);
- the work runs cancelled as soon as the client goes away (499, counted);
- the metric of the route's calls by mode and outcome ("ok", "stream", "error" or what the work names);
- the lease counts the answer's tokens (a stream's as it passes) and gives back its slot at the end;
- a stream goes back as it arrives, anything else as one body.

The route says how its answers are framed (`Framing`: media types, its metric, and how an error becomes
a response when the route does not use the app's OpenAI-shaped error handler).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from middleware.api.deps import json_body
from middleware.errors import InvalidRequest, PersonaError
from middleware.feedback.answers import RESPONSE_ID_HEADER, PendingAnswer
from middleware.identity import app_caller, bind_user, end_user_id, request_segment
from middleware.personalize.resolve import NOTHING
from middleware.personalize.service import ActivePersona
from middleware.quotas.service import Lease
from middleware.services import Services
from middleware.upstream import ClientDisconnected, cancel_on_disconnect, monotonic_ms

VERSION_HEADER = "x-persona-version"
SOURCE_HEADER = "x-persona-source"
OVERHEAD_HEADER = "x-persona-overhead-ms"
MODE_HEADER = "x-persona-mode"
RERANKER_HEADER = "x-persona-reranker"
MODES = ("inject", "off", "rerank")
CLIENT_CLOSED_REQUEST = 499


@dataclass(frozen=True)
class Framing:
    """How a route frames its answers."""

    media_type: str = "application/json"
    stream_media_type: str = "text/event-stream"
    # How a failure becomes a response; None: raised to the app's handler (OpenAI's error shape).
    error_response: Callable[[PersonaError], Response] | None = None
    # The `route` label of persona_route_requests; None: persona_chat_requests (chat completions).
    metric_route: str | None = None


OPENAI_CHAT = Framing()


@dataclass
class Answer:
    """What a chat-like call's work produced: a whole body or a stream, its own headers, its outcome."""

    body: bytes | AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    outcome: str | None = None  # the metric's outcome label; by default "stream" or "ok"
    status: int = 200
    media_type: str | None = None  # None: the route's Framing decides
    counted: bool = False  # the work counted its tokens itself (the lease only gives back its slot)


@dataclass(frozen=True)
class Admitted:
    """A chat-like call let through: who it is for, its body, its mode, its lease and its persona."""

    tenant: str
    user: str | None
    body: dict[str, Any]
    mode: str
    lease: Lease
    found: ActivePersona | None
    started: float  # time.perf_counter() when the call arrived
    source: str = "none"  # where the persona came from (personalize.resolve.SOURCES)
    # The app's conversation as it arrived (chat and Messages `messages`, Responses `input`): the
    # feedback record's prompt (routes place the persona in copies, never in this value).
    prompt: Any = None

    @property
    def version(self) -> int | None:
        return self.found.version if self.found is not None else None


def persona_mode(request: Request, *, rerank: bool = True) -> str:
    mode = request.headers.get(MODE_HEADER, "inject").strip().lower() or "inject"
    if mode not in MODES:
        raise InvalidRequest(f"{MODE_HEADER} must be one of {', '.join(MODES)}", param=MODE_HEADER)
    if mode == "rerank" and not rerank:
        raise InvalidRequest(
            f"{MODE_HEADER}: rerank is available on /v1/chat/completions only; use inject or off here",
            param=MODE_HEADER,
        )
    return mode


async def admit(
    request: Request,
    services: Services,
    validate: Callable[[Any], dict[str, Any]],
    *,
    rerank_cost: int | None = None,
) -> Admitted:
    """The prelude of every chat-like route (see the module's docstring). `validate` checks the
    decoded body; `rerank_cost` is what a rerank costs in upstream calls (None: refused here, 400)."""
    started = time.perf_counter()
    tenant, token_user = app_caller(request.headers, services.settings, services.user_tokens)
    body = validate(await json_body(request))
    user = end_user_id(request.headers, body)
    if token_user is not None:  # a user token acts for its own user only
        user = bind_user(token_user, user)
    mode = persona_mode(request, rerank=rerank_cost is not None)
    quotas = services.quotas
    quotas.check_body(tenant, body)
    cost = rerank_cost if mode == "rerank" and rerank_cost is not None else 1
    resolved = NOTHING
    if user is not None and mode != "off":
        # own > segment (named by the request, else assigned) > tenant default > none, one round trip
        segment = request_segment(request.headers, body)
        lease, resolved = await quotas.admit_and_personalize(
            tenant, user, cost, services.resolver, segment=segment
        )
        if resolved.persona is not None:
            services.metrics.persona_injected.inc()
    else:
        lease = await quotas.admit(tenant, user, cost)
    prompt = body.get("messages", body.get("input"))
    return Admitted(tenant, user, body, mode, lease, resolved.persona, started, resolved.source, prompt)


def pending_answer(request: Request, services: Services, call: Admitted) -> PendingAnswer:
    """The answer's id and what its feedback record will say (the arm: the persona mode, a rerank
    with its reranker)."""
    arm = call.mode
    if arm == "rerank":
        arm = f"rerank:{request.headers.get(RERANKER_HEADER) or services.settings.reranker}"
    return services.answers.open(
        call.tenant,
        call.user,
        persona_version=call.version,
        persona_source=call.source,
        arm=arm,
        model=call.body.get("model"),
        prompt=call.prompt,
    )


def persona_headers(version: int | None, overhead_ms: float, source: str = "none") -> dict[str, str]:
    """`source`: where the persona came from (`personalize.resolve.SOURCES`); its version is the
    version of that persona line (the user's, the segment's or the tenant default's)."""
    return {
        VERSION_HEADER: str(version) if version is not None else "none",
        SOURCE_HEADER: source if version is not None else "none",
        OVERHEAD_HEADER: f"{overhead_ms:.3f}",
    }


async def answer(
    request: Request,
    services: Services,
    call: Admitted,
    work: Awaitable[bytes | AsyncIterator[bytes] | Answer],
    *,
    framing: Framing = OPENAI_CHAT,
    relay: Mapping[str, str] | None = None,
) -> Response:
    """Run `work` (not yet started) for the admitted `call` and answer (see the module's docstring).

    `relay` holds the upstream headers the app must see (filled by the upstream call as it runs)."""
    metrics = services.metrics
    lease = call.lease
    overhead_ms = monotonic_ms(call.started)
    metrics.overhead_seconds.observe(overhead_ms / 1000.0)
    headers = persona_headers(call.version, overhead_ms, call.source)

    def count(outcome: str) -> None:
        if framing.metric_route is None:
            metrics.chat_requests.labels(call.mode, outcome).inc()
        else:
            metrics.route_requests.labels(framing.metric_route, call.mode, outcome).inc()

    try:
        result = await cancel_on_disconnect(request.receive, work)
    except ClientDisconnected:
        metrics.client_disconnects.inc()
        await lease.release()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except PersonaError as exc:
        count("error")
        await lease.release()
        if framing.error_response is None:
            raise
        return framing.error_response(exc)
    except BaseException:
        count("error")
        await lease.release()
        raise
    if not isinstance(result, Answer):
        result = Answer(result)
    streamed = not isinstance(result.body, bytes)
    count(result.outcome or ("stream" if streamed else "ok"))
    if relay:
        headers.update(relay)
    if result.headers:
        headers.update(result.headers)
    if isinstance(result.body, bytes):
        if result.counted:
            await lease.release()
        elif lease.active:
            await lease.settle(result.body)
        if result.status < 400:
            pending = pending_answer(request, services, call)
            headers[RESPONSE_ID_HEADER] = pending.response_id
            pending.finish(result.body)
        return Response(
            result.body,
            status_code=result.status,
            media_type=result.media_type or framing.media_type,
            headers=headers,
        )
    body = result.body
    if result.counted:
        await lease.release()
    elif lease.active:
        body = lease.guard_stream(body)
    if result.status < 400:
        pending = pending_answer(request, services, call)
        headers[RESPONSE_ID_HEADER] = pending.response_id
        body = pending.watch(body)
    return StreamingResponse(
        body,
        status_code=result.status,
        media_type=result.media_type or framing.stream_media_type,
        headers=headers,
    )
