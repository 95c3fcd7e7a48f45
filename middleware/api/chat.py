"""POST /v1/chat/completions: the drop-in OpenAI-compatible surface (GET /v1/models: api/passthrough.py).

The body is checked against the published schema (`chat_schema`) and parsed once; only `messages`
(and `model`, for aliases) is touched, and the upstream's answer goes back as bytes, streamed chunk by
chunk when the client asked for a stream. `X-Persona-Mode: rerank` answers with the best of the
candidate variants instead (`rerank.mode`). Caller, user, mode, quota and persona: `chatlike.admit`;
headers, metrics, tokens and disconnects: `chatlike.answer`.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from middleware.api.chat_schema import CHAT_REQUEST_SCHEMA, validate_chat_body
from middleware.api.chatlike import Admitted, Answer, admit, answer
from middleware.api.sse import completion_events
from middleware.candidates.variants import DEFAULT_VARIANTS
from middleware.personalize.block import place_persona
from middleware.rerank.hookspec import EndUser
from middleware.rerank.mode import Metering, Reranked, rerank
from middleware.rerank.registry import require_enabled
from middleware.services import Services

router = APIRouter(tags=["chat"])

RERANKER_HEADER = "x-persona-reranker"
DETAILS_HEADER = "x-persona-rerank-details"


@router.post(
    "/v1/chat/completions",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST_SCHEMA}}}
    },
)
async def chat_completions(request: Request) -> Response:
    # The hot path takes its services straight from app state (no dependency resolution).
    services: Services = request.app.state.services
    # a rerank: one upstream call per variant
    call = await admit(request, services, validate_chat_body, rerank_cost=len(DEFAULT_VARIANTS))
    if call.mode == "rerank":
        return await answer(request, services, call, reranked(request, services, call))
    body = call.body
    if call.found is not None:
        body["messages"] = place_persona(body["messages"], call.found.block)
    upstream, body["model"] = services.upstreams.route(body["model"])
    relay: dict[str, str] = {}  # the upstream's tracing and back-off headers, for the app
    forward = upstream.stream(body, relay) if body.get("stream") else upstream.complete(body, relay)
    return await answer(request, services, call, forward, relay=relay)


async def reranked(request: Request, services: Services, call: Admitted) -> Answer:
    """The rerank mode's work: the candidates, the reranker's pick, every candidate's tokens counted."""
    settings, body, found, user = services.settings, call.body, call.found, call.user
    named = call.arm.reranker if call.arm is not None else request.headers.get(RERANKER_HEADER)
    reranker_name = require_enabled(settings, named or settings.reranker)
    reranker = await services.rerankers.aget(reranker_name)
    upstream, body["model"] = services.upstreams.route(body["model"])
    end_user = (
        EndUser(call.tenant, user, found.version, found.version_id, found.persona)
        if user and found is not None
        else EndUser(call.tenant, user)
        if user
        else None
    )
    block = found.block if found is not None else None
    show_details = request.headers.get(DETAILS_HEADER, "").lower() in ("1", "true", "yes")
    result = await rerank(
        reranker,
        reranker_name,
        upstream,
        body,
        block=block,
        end_user=end_user,
        metrics=services.metrics,
        metering=Metering(services.quotas, call.tenant, user),  # the scorer's own upstream calls count too
    )
    chosen = reranked_answer(result, body, details=show_details)
    # every candidate's tokens, written with the call's slot behind the answer (`chatlike.answer`)
    chosen.tokens = services.quotas.tokens_of(
        call.tenant, *(c.completion.get("usage") for c in result.candidates if c.completion)
    )
    return chosen


def reranked_answer(result: Reranked, body: dict[str, Any], *, details: bool) -> Answer:
    """The rerank winner as an ordinary chat.completion (or its SSE stream), with the rerank headers."""
    chosen = result.chosen.completion
    assert chosen is not None
    headers = {
        RERANKER_HEADER: result.reranker,
        "x-persona-rerank-chosen": str(result.chosen.index),
        "x-persona-rerank-fallback": "true" if result.fallback else "false",
        "x-persona-rerank-ms": f"{result.scoring_ms:.3f}",
    }
    if result.scores is not None:
        headers["x-persona-rerank-scores"] = ",".join(f"{s:.4f}" for s in result.scores)
    shown = {"persona_rerank": result.details()} if details else {}
    outcome = "fallback" if result.fallback else "ok"
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = completion_events(chosen, include_usage=include_usage, extra=shown)
        return Answer(events, headers, outcome)
    return Answer(orjson.dumps({**chosen, **shown}), headers, outcome)
