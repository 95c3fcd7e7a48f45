"""Rerank mode: sample the candidate variants, score them for the user, keep the best.

The candidates are the four variants of the collection flow (docs/METHOD.md §1) generated concurrently by
the one candidate generator, each carrying the user's persona block. A scorer failure falls back to
the first candidate that succeeded and is counted in metrics. The result is a `Reranked`; the chat
route turns it into the HTTP answer.

The scorer's own upstream calls count against the tenant's quotas (`Metering`): the calls a reranker
declares (`scoring_calls`) are admitted before scoring, and a refusal (429 reason) is a fallback, not
an error (the candidates are already paid for); the tokens it reports are added to the tenant's day.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from middleware.candidates.generate import Candidate, generate_all
from middleware.candidates.variants import DEFAULT_VARIANTS, plans
from middleware.errors import RateLimited, UpstreamError
from middleware.metrics import Metrics
from middleware.quotas.service import Lease, Quotas
from middleware.quotas.usage import tokens_used
from middleware.rerank.hookspec import EndUser, Reranker
from middleware.upstream import Upstream

log = logging.getLogger("middleware.rerank")


@dataclass(frozen=True)
class Metering:
    """Whose quotas a rerank's scoring calls count against."""

    quotas: Quotas
    tenant: str
    user: str | None

    async def admit(self, calls: int) -> Lease | None:
        return await self.quotas.admit(self.tenant, self.user, calls) if calls > 0 else None

    async def count(self, usage: Any, admitted: int) -> None:
        """The tokens the scorer reported, and any calls it made beyond those admitted (retries)."""
        if not isinstance(usage, dict):
            return
        made = usage.get("calls")
        extra = made - admitted if isinstance(made, int) and made > admitted else 0
        tokens = tokens_used(usage)
        if extra or tokens:
            await self.quotas.record_job(self.tenant, extra, tokens)


def scoring_calls(reranker: Reranker, candidates: int) -> int:
    """The upstream calls a reranker says scoring makes (0 when it does not say: a local model)."""
    declared = getattr(reranker, "scoring_calls", None)
    return max(0, int(declared(candidates))) if declared is not None else 0


@dataclass(frozen=True)
class Reranked:
    """The outcome of one rerank: every candidate, the scores of those that answered, the winner."""

    reranker: str
    candidates: list[Candidate]  # one per variant, in variant order
    scores: list[float] | None  # one per candidate that answered; None when scoring failed
    chosen: Candidate
    scoring_ms: float

    @property
    def fallback(self) -> bool:
        return self.scores is None

    def details(self) -> dict[str, Any]:
        """Every candidate with its score (or its error), for a client that asked to see them."""
        score_iter = iter(self.scores or [])
        shown = []
        for candidate in self.candidates:
            entry = candidate.to_dict()
            entry.pop("finish_reason", None)
            entry.pop("usage", None)
            entry.pop("latency_ms", None)
            if candidate.ok:
                entry["score"] = next(score_iter, None)
            shown.append(entry)
        return {
            "reranker": self.reranker,
            "chosen_index": self.chosen.index,
            "fallback": self.fallback,
            "candidates": shown,
        }


async def rerank(
    reranker: Reranker,
    reranker_name: str,
    upstream: Upstream,
    request: dict[str, Any],
    *,
    block: str | None,
    end_user: EndUser | None,
    metrics: Metrics,
    metering: Metering | None = None,
) -> Reranked:
    """Generate every variant of `request` (its model already the upstream's name), score, choose.

    A reranker may get ready while the candidates generate: `prepare(context, user=)` with the
    conversation, `prepare_candidate(text, user=)` with each candidate that arrives early.
    """
    context = request["messages"]
    prepare = getattr(reranker, "prepare", None)
    prepare_candidate = getattr(reranker, "prepare_candidate", None)
    on_early: Callable[[Candidate], Awaitable[None]] | None = None
    if prepare_candidate is not None:

        async def on_early(candidate: Candidate) -> None:
            await prepare_candidate(candidate.text, user=end_user)

    prepared = asyncio.ensure_future(prepare(context, user=end_user)) if prepare is not None else None
    try:
        candidates = await generate_all(
            upstream,
            {k: v for k, v in request.items() if k != "messages"},
            context,
            plans(DEFAULT_VARIANTS, block),
            on_early=on_early,
        )
    except BaseException:
        if prepared is not None:
            prepared.cancel()
        raise
    if prepared is not None:
        try:
            await prepared
        except Exception as exc:  # only a head start: score() does the work itself
            log.warning("reranker %s failed to prepare: %s", reranker_name, exc)
    answered = [c for c in candidates if c.ok]
    if not answered:
        first = next(c.error for c in candidates if c.error is not None)
        raise first if isinstance(first, UpstreamError) else UpstreamError(str(first))
    scores, scoring_ms = await _score(reranker, reranker_name, context, answered, end_user, metrics, metering)
    winner = 0 if scores is None else max(range(len(scores)), key=lambda k: scores[k])
    return Reranked(reranker_name, candidates, scores, answered[winner], scoring_ms)


async def _score(
    reranker: Reranker,
    name: str,
    context: list[dict[str, Any]],
    answered: list[Candidate],
    end_user: EndUser | None,
    metrics: Metrics,
    metering: Metering | None = None,
) -> tuple[list[float] | None, float]:
    """(one score per answered candidate or None after a scorer failure, the milliseconds it took)."""
    started = time.perf_counter()
    calls = scoring_calls(reranker, len(answered)) if metering is not None else 0
    lease: Lease | None = None
    usage: Any = None
    try:
        if metering is not None:
            lease = await metering.admit(calls)
        scores = await reranker.score(context, [c.text for c in answered], user=end_user)
        usage = getattr(scores, "usage", None)
        if len(scores) != len(answered):
            raise ValueError(f"reranker returned {len(scores)} scores for {len(answered)} candidates")
    except Exception as exc:  # any scorer failure: fall back, never fail the chat
        usage = usage if usage is not None else getattr(exc, "usage", None)
        if isinstance(exc, RateLimited):
            log.info("reranker %s refused by the tenant's quota, returning the first candidate", name)
        else:
            log.warning("reranker %s failed, returning the first candidate: %s", name, exc)
        metrics.rerank_fallbacks.inc()
        return None, (time.perf_counter() - started) * 1000.0
    finally:
        if lease is not None:
            await lease.release()
        if metering is not None and usage is not None:
            await metering.count(usage, calls)
    elapsed = time.perf_counter() - started
    metrics.rerank_seconds.labels(name).observe(elapsed)
    return [float(s) for s in scores], elapsed * 1000.0
