"""`X-Persona-Mode: rerank`: sample the candidate variants, score them for the user, return the best.

The candidates are the four variants of the collection flow (METHOD.md §1) generated concurrently,
each carrying the user's persona block. The winner goes back as an ordinary chat.completion (or,
with `stream: true`, as an ordinary SSE stream once chosen). A scorer failure falls back to the first
candidate that succeeded and is counted in metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from middleware.collection.variants import DEFAULT_VARIANTS, Variant, apply_variant
from middleware.errors import PersonaError, UpstreamError
from middleware.personalize.block import inject_block
from middleware.quotas.service import Quotas
from middleware.rerank.hookspec import EndUser
from middleware.rerank.registry import RerankerRegistry, require_enabled
from middleware.services import Services
from middleware.upstream import ClientDisconnected, Upstream, cancel_on_disconnect, monotonic_ms

log = logging.getLogger("middleware.rerank")
RERANKER_HEADER = "x-persona-reranker"
DETAILS_HEADER = "x-persona-rerank-details"
# Sampling controls the variants set themselves, and streaming, which happens after selection.
VARIANT_OWNED_FIELDS = ("stream", "stream_options", "n", "temperature")


def registry_of(services: Services) -> RerankerRegistry:
    registry: RerankerRegistry = services.extras["rerankers"]
    return registry


async def generate_candidates(
    upstream: Upstream,
    body: dict[str, Any],
    block: str | None,
    variants: tuple[Variant, ...],
    on_candidate: Callable[[str], Awaitable[None]] | None = None,
) -> list[dict[str, Any] | PersonaError]:
    """Every variant's completion (or its error), generated concurrently. `on_candidate(text)` runs
    for each candidate that arrives while others are still being generated (not for the last one,
    which is left to the scorer), so a reranker can get ready for scoring in the meantime."""
    base = {k: v for k, v in body.items() if k not in VARIANT_OWNED_FIELDS}
    # after the app's instructions (apply_variant then moves the first one where the variant puts it)
    personalised = inject_block(body["messages"], block) if block is not None else body["messages"]
    pending = len(variants)

    async def one(variant: Variant) -> dict[str, Any] | PersonaError:
        nonlocal pending
        try:
            result = await generate(variant)
        finally:
            pending -= 1
        if on_candidate is not None and pending > 0 and isinstance(result, dict):
            try:
                await on_candidate(candidate_text(result))
            except Exception as exc:  # only a head start: scoring does the work itself
                log.warning("a reranker failed to prepare a candidate: %s", exc)
        return result

    async def generate(variant: Variant) -> dict[str, Any] | PersonaError:
        messages = apply_variant(personalised, variant)
        try:
            raw = await upstream.complete({**base, "messages": messages, "temperature": variant.temperature})
        except PersonaError as exc:
            return exc
        completion: dict[str, Any] = orjson.loads(raw)
        return completion

    return list(await asyncio.gather(*(one(v) for v in variants)))


def candidate_text(completion: dict[str, Any]) -> str:
    message = completion["choices"][0]["message"]
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    return orjson.dumps(message.get("tool_calls") or []).decode()


async def rerank_completion(
    services: Services,
    request: Request,
    body: dict[str, Any],
    *,
    tenant: str,
    user: str | None,
    block: str | None,
    version: int | None,
    started: float,
    version_id: str | None = None,
) -> Response:
    registry = registry_of(services)
    reranker_name = require_enabled(
        services.settings, request.headers.get(RERANKER_HEADER) or services.settings.reranker
    )
    reranker = await registry.aget(reranker_name)
    upstream, body["model"] = services.upstreams.route(body["model"])
    overhead_ms = monotonic_ms(started)

    end_user = EndUser(tenant, user, version, version_id) if user else None
    prepare = getattr(reranker, "prepare", None)
    prepare_candidate = getattr(reranker, "prepare_candidate", None)
    on_candidate = partial(prepare_candidate, user=end_user) if prepare_candidate is not None else None

    async def work() -> tuple[list[dict[str, Any] | PersonaError], list[float] | None, float]:
        # A reranker may get ready (encode the context, fetch per-user state) while candidates generate.
        prepared = (
            asyncio.ensure_future(prepare(body["messages"], user=end_user)) if prepare is not None else None
        )
        try:
            results = await generate_candidates(upstream, body, block, DEFAULT_VARIANTS, on_candidate)
        except BaseException:
            if prepared is not None:
                prepared.cancel()
            raise
        if prepared is not None:
            try:
                await prepared
            except Exception as exc:  # only a head start: score() does the work itself
                log.warning("reranker %s failed to prepare: %s", reranker_name, exc)
        ok = [r for r in results if isinstance(r, dict)]
        await Quotas.of(services).add_usage(tenant, *(r.get("usage") for r in ok))
        if not ok:
            first = next(r for r in results if isinstance(r, PersonaError))
            raise first if isinstance(first, UpstreamError) else UpstreamError(str(first))
        scoring_started = time.perf_counter()
        try:
            scores = await reranker.score(body["messages"], [candidate_text(r) for r in ok], user=end_user)
            if len(scores) != len(ok):
                raise ValueError(f"reranker returned {len(scores)} scores for {len(ok)} candidates")
        except Exception as exc:  # any scorer failure: fall back, never fail the chat
            log.warning("reranker %s failed, returning the first candidate: %s", reranker_name, exc)
            services.metrics.rerank_fallbacks.inc()
            return results, None, time.perf_counter() - scoring_started
        scoring_s = time.perf_counter() - scoring_started
        services.metrics.rerank_seconds.labels(reranker_name).observe(scoring_s)
        return results, [float(s) for s in scores], scoring_s

    try:
        results, scores, scoring_s = await cancel_on_disconnect(request.receive, work())
    except ClientDisconnected:
        services.metrics.client_disconnects.inc()
        return Response(status_code=499)

    ok_indexes = [i for i, r in enumerate(results) if isinstance(r, dict)]
    winner_pos = 0 if scores is None else max(range(len(scores)), key=lambda k: scores[k])
    chosen_index = ok_indexes[winner_pos]
    chosen: dict[str, Any] = results[chosen_index]  # type: ignore[assignment]
    services.metrics.chat_requests.labels("rerank", "fallback" if scores is None else "ok").inc()

    headers = {
        "x-persona-version": str(version) if version is not None else "none",
        "x-persona-overhead-ms": f"{overhead_ms:.3f}",
        "x-persona-reranker": reranker_name,
        "x-persona-rerank-chosen": str(chosen_index),
        "x-persona-rerank-fallback": "true" if scores is None else "false",
        "x-persona-rerank-ms": f"{scoring_s * 1000.0:.3f}",
    }
    if scores is not None:
        headers["x-persona-rerank-scores"] = ",".join(f"{s:.4f}" for s in scores)
    if request.headers.get(DETAILS_HEADER, "").lower() in ("1", "true", "yes"):
        chosen = {**chosen, "persona_rerank": details(results, scores, chosen_index, reranker_name)}

    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            stream_completion(chosen, include_usage), media_type="text/event-stream", headers=headers
        )
    return Response(orjson.dumps(chosen), media_type="application/json", headers=headers)


def details(
    results: list[dict[str, Any] | PersonaError], scores: list[float] | None, chosen: int, reranker: str
) -> dict[str, Any]:
    score_iter = iter(scores or [])
    candidates = []
    for index, (variant, result) in enumerate(zip(DEFAULT_VARIANTS, results, strict=True)):
        entry: dict[str, Any] = {"index": index, "variant": variant.model_dump()}
        if isinstance(result, PersonaError):
            entry["error"] = result.to_body()["error"]
        else:
            entry["content"] = result["choices"][0]["message"].get("content")
            entry["score"] = next(score_iter, None)
        candidates.append(entry)
    return {
        "reranker": reranker,
        "chosen_index": chosen,
        "fallback": scores is None,
        "candidates": candidates,
    }


async def stream_completion(completion: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """Frame a finished chat.completion as OpenAI's SSE chunks."""
    head = {
        "id": completion.get("id", "chatcmpl-rerank"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", int(time.time())),
        "model": completion.get("model", ""),
    }

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n"

    choice = completion["choices"][0]
    message = choice["message"]
    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    content = message.get("content") or ""
    for start in range(0, len(content), 64):
        yield event([{"index": 0, "delta": {"content": content[start : start + 64]}, "finish_reason": None}])
    for position, call in enumerate(message.get("tool_calls") or []):
        delta = {"tool_calls": [{"index": position, **call}]}
        yield event([{"index": 0, "delta": delta, "finish_reason": None}])
    yield event([{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}])
    if include_usage and completion.get("usage"):
        yield event([], usage=completion["usage"])
    if "persona_rerank" in completion:
        yield event([], persona_rerank=completion["persona_rerank"])
    yield b"data: [DONE]\n\n"
