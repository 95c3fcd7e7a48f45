"""POST /v1/chat/completions: the drop-in OpenAI-compatible surface (GET /v1/models: api/passthrough.py).

The body is checked against the published schema (`chat_schema`) and parsed once; only `messages`
(and `model`, for aliases) is touched, and the upstream's answer goes back as bytes, streamed chunk by
chunk when the client asked for a stream. `X-Persona-Mode: rerank` answers with the best of the
candidate variants instead (`rerank.mode`). Headers, metrics and disconnects: `chatlike.answer`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from middleware.api.chat_schema import CHAT_REQUEST_SCHEMA, validate_chat_body
from middleware.api.chatlike import Answer, answer
from middleware.api.deps import json_body
from middleware.api.sse import completion_events
from middleware.candidates.variants import DEFAULT_VARIANTS
from middleware.config import PERSONA_MODES
from middleware.errors import InvalidRequest
from middleware.identity import app_caller, bind_user, end_user_id
from middleware.personalize.block import place_persona
from middleware.personalize.policy import Arm
from middleware.personalize.service import ActivePersona
from middleware.rerank.hookspec import EndUser
from middleware.rerank.mode import Reranked, rerank
from middleware.rerank.registry import require_enabled
from middleware.services import Services

router = APIRouter(tags=["chat"])

MODES = PERSONA_MODES
MODE_HEADER = "x-persona-mode"
RERANKER_HEADER = "x-persona-reranker"
DETAILS_HEADER = "x-persona-rerank-details"


def persona_mode(request: Request, default: str = "inject") -> str:
    """X-Persona-Mode, or the tenant's default mode (`PERSONA_POLICY`) when the request names none."""
    mode = request.headers.get(MODE_HEADER, default).strip().lower() or default
    if mode not in MODES:
        raise InvalidRequest(f"{MODE_HEADER} must be one of {', '.join(MODES)}", param=MODE_HEADER)
    return mode


@router.post(
    "/v1/chat/completions",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST_SCHEMA}}}
    },
)
async def chat_completions(request: Request) -> Response:
    # The hot path takes its services straight from app state (no dependency resolution).
    started = time.perf_counter()
    services: Services = request.app.state.services
    settings = services.settings
    tenant, token_user = app_caller(request.headers, settings, services.user_tokens)
    body = validate_chat_body(await json_body(request))
    user = end_user_id(request.headers, body)
    if token_user is not None:  # a user token acts for its own user only
        user = bind_user(token_user, user)
    mode = persona_mode(request, services.policy.default_mode(tenant))
    quotas = services.quotas
    quotas.check_body(tenant, body)
    arm: Arm | None = None
    found: ActivePersona | None = None
    if mode == "auto" and user is not None:
        # the arm's posteriors ride in the persona read's round trip, like the quota check
        lease, found, posteriors = await quotas.admit_and_personalize_auto(
            tenant, user, 1, services.personalizer, services.policy
        )
        arm = services.policy.choose(tenant, posteriors)
        mode = arm.mode
        if mode == "off":
            found = None
        elif mode == "rerank":  # one call was admitted with the read: the other variants now
            try:
                await (await quotas.admit(tenant, user, len(DEFAULT_VARIANTS) - 1)).release()
            except BaseException:
                await lease.release()
                raise
    else:
        mode = "inject" if mode == "auto" else mode  # without a user there is no policy to ask
        cost = len(DEFAULT_VARIANTS) if mode == "rerank" else 1  # a rerank: one upstream call per variant
        if user is not None and mode != "off":
            # the quota check rides in the persona read's round trip
            lease, found = await quotas.admit_and_personalize(tenant, user, cost, services.personalizer)
        else:
            lease = await quotas.admit(tenant, user, cost)
    if found is not None:
        services.metrics.persona_injected.inc()
    version = found.version if found is not None else None
    block = found.block if found is not None else None
    if found is not None and arm is not None and not arm.exemplars:
        block = services.personalizer.block_without_exemplars(found)
    arm_name = arm.name if arm is not None else None

    if mode == "rerank":
        try:
            named = arm.reranker if arm is not None else request.headers.get(RERANKER_HEADER)
            reranker_name = require_enabled(settings, named or settings.reranker)
            reranker = await services.rerankers.aget(reranker_name)
        except BaseException:
            await lease.release()
            raise
        upstream, body["model"] = services.upstreams.route(body["model"])
        end_user = (
            EndUser(tenant, user, found.version, found.version_id, found.persona)
            if user and found is not None
            else EndUser(tenant, user)
            if user
            else None
        )
        show_details = request.headers.get(DETAILS_HEADER, "").lower() in ("1", "true", "yes")

        async def reranked() -> Answer:
            result = await rerank(
                reranker,
                reranker_name,
                upstream,
                body,
                block=block,
                end_user=end_user,
                metrics=services.metrics,
            )
            await quotas.add_usage(
                tenant, *(c.completion.get("usage") for c in result.candidates if c.completion)
            )
            return reranked_answer(result, body, details=show_details)

        try:
            return await answer(
                request,
                services.metrics,
                reranked(),
                mode=mode,
                persona_version=version,
                started=started,
                arm=arm_name,
            )
        finally:
            await lease.release()

    if block is not None:
        body["messages"] = place_persona(body["messages"], block)
    upstream, body["model"] = services.upstreams.route(body["model"])
    relay: dict[str, str] = {}  # the upstream's tracing and back-off headers, for the app
    forward = upstream.stream(body, relay) if body.get("stream") else upstream.complete(body, relay)
    return await answer(
        request,
        services.metrics,
        forward,
        mode=mode,
        persona_version=version,
        started=started,
        lease=lease,
        relay=relay,
        arm=arm_name,
    )


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
