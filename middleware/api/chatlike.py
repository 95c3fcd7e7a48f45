"""Chat-like calls (chat completions, the Responses API, Anthropic Messages): one prelude, one answer.

`admit` is everything a chat-like route does before its own work, the same on every route:

- the caller: an app key -> its tenant, or an end-user token -> its tenant and the user it is bound to
  (`identity.app_caller`);
- the body, decoded once and checked by the route's own validator;
- the end user (`identity.end_user_id`; with a user token, naming anyone else is a 403);
- the persona mode (`X-Persona-Mode`, else the tenant's default mode in `PERSONA_POLICY`; rerank only
  where the route offers it); in auto mode the arm (`Policy.choose`, README "Auto mode"), whose
  posteriors ride in the persona read's round trip (`Quotas.admit_and_personalize` with `policy`);
- the tenant's caps (`Quotas.check_body`) and admission (`Quotas.admit_and_personalize`: the quota
  check rides in the persona reads' round trip), which give a lease and the persona resolved as
  own for the routed context > own > segment > tenant default > none (`personalize.resolve`; the
  context from `X-Persona-Context` or `metadata.context`, else routed by the last user turn, README
  "Contexts"; the segment from `X-Persona-Segment` or `metadata.segment`, else the user's assigned
  one).

`answer` runs the route's work and answers, the same on every route:

- `x-persona-version`, `x-persona-source`, `x-persona-context` and `x-persona-overhead-ms` headers, and the overhead metric (the time the proxy
  spent before the work started upstream), plus the upstream's relayed headers;
- `x-persona-response-id`: the answer's id for `POST /v1/feedback`; its feedback record (the arm, the
  app's conversation as admitted, the answer) is written in the background once the body is known
  (a stream's chunks are kept as they are sent, and its record queued after its last byte);
- the work runs cancelled as soon as the client goes away (499, counted);
- the metric of the route's calls by mode and outcome ("ok", "stream", "error" or what the work names);
- the lease counts the answer's tokens (a stream's as it passes; or those the work reports in
  `Answer.tokens`, a rerank's every candidate's) and gives back its slot at the end, both written
  behind the answer (`store/write_behind.py`);
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
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from middleware.api.deps import json_body
from middleware.config import PERSONA_MODES
from middleware.errors import InvalidRequest, PersonaError
from middleware.feedback.answers import RESPONSE_ID_HEADER, KeptChunks, PendingAnswer
from middleware.identity import app_caller, bind_user, end_user_id, request_segment
from middleware.personalize.contexts import GENERAL, last_user_text, valid_tag
from middleware.personalize.policy import Arm
from middleware.personalize.service import ActivePersona
from middleware.quotas.service import Lease
from middleware.services import Services
from middleware.upstream import ClientDisconnected, cancel_on_disconnect, monotonic_ms

VERSION_HEADER = "x-persona-version"
SOURCE_HEADER = "x-persona-source"
OVERHEAD_HEADER = "x-persona-overhead-ms"
CONTEXT_HEADER = "x-persona-context"
MODE_HEADER = "x-persona-mode"
ARM_HEADER = "x-persona-arm"
RERANKER_HEADER = "x-persona-reranker"
MODES = PERSONA_MODES
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
    # The tokens the work used, when it counted them itself (a rerank: every candidate's); None: the
    # lease counts the answer's own. Either way they are written behind the answer with the slot.
    tokens: int | None = None


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
    arm: Arm | None = None  # the auto mode's choice (`found` then holds the block the arm injects)

    @property
    def version(self) -> int | None:
        return self.found.version if self.found is not None else None

    @property
    def context(self) -> str | None:
        return self.found.context if self.found is not None else None


class StreamedAnswer(StreamingResponse):
    """A stream relayed to the client and cut short when the client goes away (its body's generators
    closed, which aborts the upstream call), without the two tasks and the task group starlette
    starts for every stream on this server: the stream is sent from the request's own task, and the
    watch for a disconnect starts only if the stream lasts (`cancel_on_disconnect`). With `kept`, each
    chunk sent is also kept there (while it has room) for the answer's feedback record."""

    def __init__(self, *args: Any, kept: KeptChunks | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kept = kept

    async def stream_response(self, send: Send) -> None:
        kept = self.kept
        if kept is None:
            await super().stream_response(send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        chunks, room = kept.chunks, kept.room
        async for chunk in self.body_iterator:
            if not isinstance(chunk, bytes):
                chunk = chunk.encode(self.charset) if isinstance(chunk, str) else bytes(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if room > 0:
                chunks.append(chunk)
                room -= len(chunk)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            await cancel_on_disconnect(receive, self.stream_response(send))
        except ClientDisconnected:
            closing = getattr(self.body_iterator, "aclose", None)
            if closing is not None:
                await closing()
        if self.background is not None:
            await self.background()


def persona_mode(headers: Mapping[str, str], *, rerank: bool = True, default: str = "inject") -> str:
    """X-Persona-Mode, or `default` (the tenant's mode in `PERSONA_POLICY`) when the request names none."""
    named = headers.get(MODE_HEADER)
    if named is None and default == "rerank" and not rerank:
        return "inject"  # a tenant's default rerank applies where the route reranks
    mode = (named if named is not None else default).strip().lower() or default
    if mode not in MODES:
        raise InvalidRequest(f"{MODE_HEADER} must be one of {', '.join(MODES)}", param=MODE_HEADER)
    if mode == "rerank" and not rerank:
        raise InvalidRequest(
            f"{MODE_HEADER}: rerank is available on /v1/chat/completions only; use inject, off or auto here",
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
    headers = first_values(request.scope["headers"])
    tenant, token_user = app_caller(headers, services.settings, services.user_tokens)
    body = validate(await json_body(request))
    user = end_user_id(headers, body)
    if token_user is not None:  # a user token acts for its own user only
        user = bind_user(token_user, user)
    mode = persona_mode(headers, rerank=rerank_cost is not None, default=services.policy.default_mode(tenant))
    tag = context_tag(headers, body)
    quotas = services.quotas
    quotas.check_body(tenant, body)
    if mode == "auto" and user is None:
        mode = "inject"  # without an end user there is no policy to ask
    cost = rerank_cost if mode == "rerank" and rerank_cost is not None else 1
    found, source, arm = None, "none", None
    if user is not None and mode != "off":
        # own for the routed context > own > segment (named by the request, else assigned) >
        # tenant default > none, and in auto mode the posteriors: one round trip
        segment = request_segment(headers, body)
        text = routing_text(body.get("messages") if "messages" in body else body.get("input"))
        lease, resolved, posteriors = await quotas.admit_and_personalize(
            tenant, user, cost, services.resolver, segment=segment, tag=tag, text=text, policy=mode == "auto"
        )
        found, source = resolved.persona, resolved.source
        if mode == "auto":
            arm = services.policy.choose(tenant, posteriors, rerank=rerank_cost is not None)
            mode = arm.mode
            if mode == "off":
                found, source = None, "none"
            elif found is not None and not arm.exemplars:
                found = found._replace(block=services.resolver.personalizer.block_without_exemplars(found))
            if mode == "rerank" and rerank_cost is not None and rerank_cost > 1:
                try:  # one call was admitted with the read: the other variants now
                    await (await quotas.admit(tenant, user, rerank_cost - 1)).release()
                except BaseException:
                    await lease.release()
                    raise
        if found is not None:
            services.metrics.persona_injected.inc()
    else:
        lease = await quotas.admit(tenant, user, cost)
    prompt = body.get("messages", body.get("input"))
    return Admitted(tenant, user, body, mode, lease, found, started, source, prompt, arm)


def first_values(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """A request's headers as one plain dict, for the several the prelude reads: the names as the
    server gives them (lower case), and where a name repeats, its first value, as starlette's
    `Headers.get` answers (which scans the list on every lookup)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(raw)}


def pending_answer(request: Request, services: Services, call: Admitted) -> PendingAnswer:
    """The answer's id and what its feedback record will say (the arm: the persona mode, a rerank
    with its reranker)."""
    arm = call.mode
    if call.arm is not None:
        arm = call.arm.name
    elif arm == "rerank":
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


def persona_headers(
    version: int | None, overhead_ms: float, source: str = "none", context: str | None = None
) -> dict[str, str]:
    """`source`: where the persona came from (`personalize.resolve.SOURCES`); its version is the
    version of that persona line (the user's, a context's, the segment's or the tenant default's);
    `context`: the context persona used, else `general`."""
    return {
        VERSION_HEADER: str(version) if version is not None else "none",
        SOURCE_HEADER: source if version is not None else "none",
        CONTEXT_HEADER: context or GENERAL,
        OVERHEAD_HEADER: f"{overhead_ms:.3f}",
    }


def context_tag(headers: Mapping[str, str], body: Mapping[str, object]) -> str | None:
    """The request's context tag: `X-Persona-Context`, else `metadata.context`; None when untagged.
    A malformed tag is a 400 (README "Contexts")."""
    tag = headers.get(CONTEXT_HEADER)
    if tag is None:
        metadata = body.get("metadata")
        found = metadata.get("context") if isinstance(metadata, dict) else None
        if found is None:
            return None
        if not isinstance(found, str):
            raise InvalidRequest("metadata.context must be a string", param="metadata.context")
        tag = found
    tag = tag.strip()
    if not valid_tag(tag):
        raise InvalidRequest(
            "a context tag is 1-64 letters, digits, '.', '_' or '-' (and not 'general')", param=CONTEXT_HEADER
        )
    return tag


def routing_text(messages: object) -> str:
    """The last user turn a request is routed by (`messages`/`input` as sent, or a plain string)."""
    if isinstance(messages, str):
        return messages
    return last_user_text(messages) if isinstance(messages, list) else ""


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
    headers = persona_headers(call.version, overhead_ms, call.source, call.context)
    if call.arm is not None:
        headers[ARM_HEADER] = call.arm.name

    def count(outcome: str) -> None:
        if framing.metric_route is None:
            metrics.chat_calls(call.mode, outcome).inc()
        else:
            metrics.route_calls(framing.metric_route, call.mode, outcome).inc()

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
    # the call's tokens and its concurrency slot are written behind the answer (Lease.finish)
    if isinstance(result.body, bytes):
        if result.tokens is not None:
            lease.finish(result.tokens)
        elif lease.active:
            lease.settle(result.body)
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
    background = kept = None  # the feedback record of an answer that has one, queued after the stream
    if result.tokens is not None:
        lease.finish(result.tokens)
    elif lease.active:
        body = lease.guard_stream(body)
    if result.status < 400:
        pending = pending_answer(request, services, call)
        headers[RESPONSE_ID_HEADER] = pending.response_id
        kept = pending.keep_stream()
        background = BackgroundTask(pending.ended)
    return StreamedAnswer(
        body,
        status_code=result.status,
        media_type=result.media_type or framing.stream_media_type,
        headers=headers,
        background=background,
        kept=kept,
    )
