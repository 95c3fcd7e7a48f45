"""Generate the candidates of one comparison concurrently; a failed candidate is reported, not fatal."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from middleware.collection.variants import Variant, apply_variant
from middleware.errors import PersonaError
from middleware.upstream import Upstream, monotonic_ms

log = logging.getLogger("middleware.collection")


def _error_of(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, PersonaError):
        return {**exc.to_body()["error"], "status": exc.status_code}
    return {
        "message": f"candidate failed: {type(exc).__name__}",
        "type": "api_error",
        "param": None,
        "code": "candidate_failed",
        "status": 500,
    }


async def generate_one(
    upstream: Upstream,
    model: str,
    messages: list[dict[str, Any]],
    index: int,
    variant: Variant,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """One candidate: `{"index", "variant", "content", ...}` or `{"index", "variant", "error"}`."""
    started = time.perf_counter()
    out: dict[str, Any] = {"index": index, "variant": variant.model_dump()}
    body = {
        **extra,
        "model": model,
        "messages": apply_variant(messages, variant),
        "temperature": variant.temperature,
    }
    try:
        data = orjson.loads(await upstream.complete(body))
        choice = data["choices"][0]
        content = choice["message"].get("content")
        if not isinstance(content, str):
            raise ValueError("the upstream answer has no text content")
        out.update(content=content, finish_reason=choice.get("finish_reason"), usage=data.get("usage"))
    except Exception as exc:
        log.warning("comparison candidate %d failed: %s", index, exc)
        out["error"] = _error_of(exc)
    out["latency_ms"] = round(monotonic_ms(started), 1)
    return out


async def generate_all(
    upstream: Upstream,
    model: str,
    messages: list[dict[str, Any]],
    variants: Sequence[Variant],
    extra: dict[str, Any],
) -> AsyncIterator[dict[str, Any]]:
    """Yield candidates as they finish (all started at once). Leaving early cancels the rest."""
    tasks = [
        asyncio.ensure_future(generate_one(upstream, model, messages, i, v, extra))
        for i, v in enumerate(variants)
    ]
    try:
        for next_done in asyncio.as_completed(tasks):
            yield await next_done
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
