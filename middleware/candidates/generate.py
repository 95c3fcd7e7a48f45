"""Generate the candidates of one conversation concurrently; a failed candidate is reported, not fatal.

Every candidate is one upstream chat call with the same request fields, its plan's messages and, when
its variant sets one, its temperature. Streaming and `n` are the generator's own (one whole answer per
candidate). A candidate ends as a `Candidate`: its completion, or its error as a `PersonaError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from middleware.candidates.variants import Plan, Variant
from middleware.errors import PersonaError, UpstreamError
from middleware.upstream import Upstream, monotonic_ms

log = logging.getLogger("middleware.candidates")
# Fields of the app's request that each candidate sets itself.
GENERATOR_FIELDS = ("stream", "stream_options", "n")


@dataclass(frozen=True)
class Candidate:
    """One generated candidate: exactly one of `completion` (the upstream's chat.completion) and `error`."""

    index: int
    variant: Variant | None
    completion: dict[str, Any] | None = None
    error: PersonaError | None = None
    latency_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.completion is not None

    @property
    def choice(self) -> dict[str, Any]:
        if self.completion is None:
            raise ValueError(f"candidate {self.index} failed: {self.error}")
        choice: dict[str, Any] = self.completion["choices"][0]
        return choice

    @property
    def content(self) -> str | None:
        content = self.choice["message"].get("content")
        return content if isinstance(content, str) else None

    @property
    def text(self) -> str:
        """What a scorer compares: the answer's text, or its tool calls when it has no text."""
        content = self.content
        if content:
            return content
        return orjson.dumps(self.choice["message"].get("tool_calls") or []).decode()

    def to_dict(self) -> dict[str, Any]:
        """The candidate as stored and shown: its text, or its error (OpenAI's error fields and the status)."""
        out: dict[str, Any] = {"index": self.index}
        if self.variant is not None:
            out["variant"] = self.variant.model_dump()
        if self.completion is not None:
            out.update(
                content=self.content,
                finish_reason=self.choice.get("finish_reason"),
                usage=self.completion.get("usage"),
            )
        else:
            out["error"] = error_fields(self.error)
        out["latency_ms"] = self.latency_ms
        return out


def error_fields(error: PersonaError | None) -> dict[str, Any]:
    """The one error shape of a failed candidate."""
    error = error or UpstreamError("the candidate failed", code="candidate_failed")
    return {**error.to_body()["error"], "status": error.status_code}


def as_persona_error(exc: Exception) -> PersonaError:
    if isinstance(exc, PersonaError):
        return exc
    return UpstreamError(f"candidate failed: {type(exc).__name__}", code="candidate_failed")


def _completion(raw: bytes, *, require_text: bool) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
        message = data["choices"][0]["message"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise UpstreamError(
            "the upstream answer is not a chat completion", code="bad_upstream_answer"
        ) from exc
    if not isinstance(message, dict):
        raise UpstreamError("the upstream answer is not a chat completion", code="bad_upstream_answer")
    if require_text and not isinstance(message.get("content"), str):
        raise UpstreamError("the upstream answer has no text content", code="no_content")
    completion: dict[str, Any] = data
    return completion


async def generate(
    upstream: Upstream,
    request: dict[str, Any],
    conversation: list[dict[str, Any]],
    plans: Sequence[Plan],
    *,
    require_text: bool = False,
    on_early: Callable[[Candidate], Awaitable[None]] | None = None,
) -> AsyncIterator[Candidate]:
    """Yield the candidates as they finish (all started at once). Leaving early cancels the rest.

    `request` holds the upstream model name and the request fields every candidate shares.
    `require_text`: an answer without text content counts as failed. `on_early(candidate)` runs for each
    successful candidate that arrives while others are still being generated (not for the last one), so
    a consumer can get ready in the meantime; its failure is logged and changes nothing.
    """
    base = {k: v for k, v in request.items() if k not in GENERATOR_FIELDS}
    pending = len(plans)

    async def one(index: int, plan: Plan) -> Candidate:
        nonlocal pending
        started = time.perf_counter()
        body = {**base, "messages": plan.messages(conversation)}
        if plan.variant is not None:
            body["temperature"] = plan.variant.temperature
        completion: dict[str, Any] | None = None
        error: PersonaError | None = None
        try:
            completion = _completion(await upstream.complete(body), require_text=require_text)
        except Exception as exc:
            log.warning("candidate %d failed: %s", index, exc)
            error = as_persona_error(exc)
        finally:
            pending -= 1
        candidate = Candidate(index, plan.variant, completion, error, round(monotonic_ms(started), 1))
        if on_early is not None and pending > 0 and candidate.ok:
            try:
                await on_early(candidate)
            except Exception as exc:  # only a head start
                log.warning("getting ready with candidate %d failed: %s", index, exc)
        return candidate

    tasks = [asyncio.ensure_future(one(i, plan)) for i, plan in enumerate(plans)]
    try:
        for next_done in asyncio.as_completed(tasks):
            yield await next_done
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def generate_all(
    upstream: Upstream,
    request: dict[str, Any],
    conversation: list[dict[str, Any]],
    plans: Sequence[Plan],
    *,
    require_text: bool = False,
    on_early: Callable[[Candidate], Awaitable[None]] | None = None,
) -> list[Candidate]:
    """Every candidate, in the order of `plans`."""
    done = [
        c
        async for c in generate(
            upstream, request, conversation, plans, require_text=require_text, on_early=on_early
        )
    ]
    return sorted(done, key=lambda c: c.index)
