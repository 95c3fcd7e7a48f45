"""Admitting calls against the tenant's limits (middleware/quota_policy.py) and counting the tokens they used.

Every way to make upstream calls goes through `admit` with its cost in upstream calls: a chat call
costs 1, a rerank or a comparison one per variant, a trial one per answer it generates, and each LLM
call of a background job 1. Caps on the request's shape (`n`, output tokens, variants) are checked
before anything runs and refused with 400; rate, concurrency, token and pending-comparison limits
are refused with 429 and `retry-after`. A Redis failure skips the check (quotas fail open, like
persona reads) and is counted in metrics.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from redis.asyncio import Redis

from middleware.config import Settings
from middleware.errors import InvalidRequest, RateLimited
from middleware.metrics import Metrics
from middleware.personalize.resolve import NOTHING, Resolved, Resolver, traced
from middleware.quota_policy import LimitsTable, TenantLimits
from middleware.quotas.usage import StreamUsage, tokens_in_body, tokens_used
from middleware.store.guard import STORE_ERRORS, described
from middleware.store.policy import Posteriors
from middleware.store.ratelimits import REASONS, RateLimitStore
from middleware.store.write_behind import WriteBehind
from middleware.tracing import TRACING_OFF, Tracing

log = logging.getLogger("middleware.quotas")
OUTPUT_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
DAY_S = 86_400


def utc_day(now: float) -> tuple[str, int]:
    """Today's UTC day as YYYYMMDD and the ms left until it ends."""
    day = int(now // DAY_S)
    return _day_name(day), int(((day + 1) * DAY_S - now) * 1000) + 1


@functools.lru_cache(maxsize=4)
def _day_name(day: int) -> str:
    """YYYYMMDD of the `day`th UTC day since 1970 (formatted once a day, not on every call)."""
    return time.strftime("%Y%m%d", time.gmtime(day * DAY_S))


class Lease:
    """An admitted call: counts its tokens and gives back its concurrency slot when done.

    A call that ends with an answer settles (`settle`, `guard_stream`): its tokens and its slot are
    written behind the answer (`store/write_behind.py`). A call that ends otherwise (an error, a
    refusal further on) releases its slot at once (`release`)."""

    __slots__ = ("_quotas", "_released", "_tenant", "_token")

    def __init__(self, quotas: Quotas, tenant: str, token: str | None) -> None:
        self._quotas, self._tenant, self._token = quotas, tenant, token
        self._released = token is None

    @property
    def active(self) -> bool:
        """Whether the call's end matters (a slot to give back, or tokens to count)."""
        return not self._released or self._quotas.counts_tokens(self._tenant)

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        assert self._token is not None
        try:
            await self._quotas.store.release(self._tenant, self._token)
        except STORE_ERRORS as exc:  # the lease expires on its own
            log.warning("could not release a concurrency slot: %s", described(exc))

    def finish(self, tokens: int) -> None:
        """The call answered, having used `tokens`: count them and give back the slot, behind the answer."""
        lease = None if self._released else self._token
        self._released = True
        self._quotas.settle_later(self._tenant, tokens, lease)

    def settle(self, answer: bytes) -> None:
        """A whole answer came back: count its tokens, give back the slot (both behind the answer)."""
        self.finish(tokens_in_body(answer) if self._quotas.counts_tokens(self._tenant) else 0)

    async def guard_stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass a stream through, counting the tokens its events report; settle at its end."""
        usage = StreamUsage() if self._quotas.counts_tokens(self._tenant) else None
        try:
            async for chunk in chunks:
                if usage is not None:
                    usage.feed(chunk)
                yield chunk
        finally:
            self.finish(usage.total() if usage is not None else 0)


class Quotas:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        metrics: Metrics,
        tracing: Tracing = TRACING_OFF,
        write_behind: WriteBehind | None = None,
        reads: Redis | None = None,
    ) -> None:
        """`reads`: the client of the hot path's admission-and-persona round trip (default `redis`)."""
        self.limits = LimitsTable(settings.limits)
        self.store = RateLimitStore(redis, write_behind, reads=reads)
        self._metrics = metrics
        self._tracing = tracing
        self._lease_ms = int(settings.upstream_total_timeout_s * 1000) + 60_000
        # an admission alone (no persona read) is bounded as any store command is
        self._admit_timeout_s = settings.redis_socket_timeout_s

    # --- caps (400) -------------------------------------------------------------------------------
    def check_body(self, tenant: str, body: Mapping[str, Any]) -> TenantLimits:
        """`n` and the output-token fields of a chat-like body against the tenant's caps."""
        limits = self.limits(tenant)
        n = body.get("n")
        if isinstance(n, int) and n > limits.max_n:
            self._refuse_cap(tenant, "max_n", f"'n' may be at most {limits.max_n}", "n")
        cap = limits.max_output_tokens
        if cap is not None:
            for name in OUTPUT_TOKEN_FIELDS:
                value = body.get(name)
                if isinstance(value, int) and value > cap:
                    self._refuse_cap(tenant, "max_output_tokens", f"{name!r} may be at most {cap}", name)
        return limits

    def check_variants(self, tenant: str, count: int) -> None:
        limits = self.limits(tenant)
        if count > limits.max_variants:
            self._refuse_cap(
                tenant, "max_variants", f"at most {limits.max_variants} variants per comparison", "variants"
            )

    def _refuse_cap(self, tenant: str, reason: str, message: str, param: str) -> None:
        self._metrics.quota_refusals.labels(tenant, reason).inc()
        raise InvalidRequest(message, param=param, code="limit_exceeded")

    # --- rates (429) ------------------------------------------------------------------------------
    def _call(
        self, tenant: str, user: str | None, cost: int, limits: TenantLimits
    ) -> tuple[tuple[list[str], list[Any]], str]:
        lease = os.urandom(8).hex() if limits.concurrency is not None else ""
        day, ms_to_day_end = utc_day(time.time())
        call = self.store.admit_call(
            tenant,
            user,
            cost=cost,
            rpm=limits.requests_per_minute or 0,
            user_rpm=limits.user_requests_per_minute or 0,
            concurrency=limits.concurrency or 0,
            lease=lease,
            lease_ms=self._lease_ms,
            tokens_per_day=limits.tokens_per_day or 0,
            day=day,
            ms_to_day_end=ms_to_day_end,
        )
        return call, lease

    async def admit(self, tenant: str, user: str | None, cost: int = 1) -> Lease:
        """Count `cost` upstream calls against the tenant's (and user's) limits, or raise 429."""
        limits = self.limits(tenant)
        if not limits.metered:
            return Lease(self, tenant, None)
        call, lease = self._call(tenant, user, cost, limits)
        with self._tracing.span("quota.admit", tenant, user):
            try:
                async with asyncio.timeout(self._admit_timeout_s):
                    reason, wait_ms = await self.store.admit(call)
            except STORE_ERRORS as exc:
                self._skipped(exc)
                return Lease(self, tenant, None)
            if reason:
                self.refuse(tenant, REASONS[reason], wait_ms / 1000.0)
        return Lease(self, tenant, lease or None)

    async def admit_and_personalize(
        self,
        tenant: str,
        user: str,
        cost: int,
        resolver: Resolver,
        *,
        segment: str | None = None,
        tag: str | None = None,
        text: str = "",
        policy: bool = False,
    ) -> tuple[Lease, Resolved, tuple[Posteriors, Posteriors] | None]:
        """The chat path: admission and the persona reads in one round trip (one pipeline), bounded
        by the persona read timeout; a failure lets the call through without persona or quota. `tag`
        and `text` (the last user turn) route to a context persona (`Resolver.of`). With `policy`
        (the auto mode) the user's and the tenant's posteriors ride in the same round trip (None
        without, or after a failure)."""
        limits = self.limits(tenant)
        if not limits.metered:
            resolved, posteriors = await resolver.read(
                tenant, user, segment=segment, tag=tag, text=text, policy=policy
            )
            return Lease(self, tenant, None), resolved, posteriors
        call, lease = self._call(tenant, user, cost, limits)
        personalizer = resolver.personalizer
        # One round trip holds the admission and the persona reads: its span is quota.admit, and
        # persona.read is the resolving of what it brought back.
        with self._tracing.span("quota.admit", tenant, user):
            try:
                # asyncio.timeout, not wait_for: no task of its own for the read
                async with asyncio.timeout(personalizer.read_timeout_s):
                    reason, wait_ms, reads, posteriors = await self.store.admit_and_read(
                        call, tenant, user, segment, policy=policy
                    )
            except STORE_ERRORS as exc:
                self._skipped(exc)
                personalizer.read_failed(exc)
                return Lease(self, tenant, None), NOTHING, None
            if reason:
                self.refuse(tenant, REASONS[reason], wait_ms / 1000.0)
        with self._tracing.span("persona.read", tenant, user) as span:
            resolved = await resolver.of(reads, tag=tag, text=text)
            return Lease(self, tenant, lease or None), traced(span, resolved), posteriors

    def _skipped(self, exc: BaseException) -> None:
        self._metrics.quota_store_failures.inc()
        log.warning("quota check skipped, the store failed: %s", described(exc))

    def refuse(self, tenant: str, reason: str, retry_after_s: float) -> None:
        self._metrics.quota_refusals.labels(tenant, reason).inc()
        messages = {
            "requests_per_minute": "the tenant's requests per minute",
            "user_requests_per_minute": "this user's requests per minute",
            "concurrency": "the tenant's concurrent requests",
            "tokens_per_day": "the tenant's tokens per day",
            "max_pending_comparisons": "this user's pending comparisons",
        }
        raise RateLimited(
            f"rate limit exceeded: {messages.get(reason, reason)}; retry after {retry_after_s:.0f} s",
            retry_after_s=retry_after_s,
            code=reason,
        )

    # --- tokens -----------------------------------------------------------------------------------
    def counts_tokens(self, tenant: str) -> bool:
        return self.limits(tenant).tokens_per_day is not None

    def settle_later(self, tenant: str, tokens: int, lease: str | None) -> None:
        """A finished call's tokens (0 where the tenant has no daily limit: `Lease` counts only then) and
        its lease, written behind its answer."""
        if tokens > 0 or lease is not None:
            self.store.settle_later(tenant, utc_day(time.time())[0], tokens, lease)

    async def add_tokens(self, tenant: str, tokens: int) -> None:
        if tokens <= 0 or not self.counts_tokens(tenant):
            return
        try:
            await self.store.add_tokens(tenant, utc_day(time.time())[0], tokens)
        except STORE_ERRORS as exc:
            self._metrics.quota_store_failures.inc()
            log.warning("tokens not counted, the store failed: %s", described(exc))

    def tokens_of(self, tenant: str, *usages: Any) -> int:
        """The tokens of upstream `usage` dicts (either API's shape) that count against the tenant's
        tokens per day (0 where it has no such limit)."""
        return sum(tokens_used(u) for u in usages) if self.counts_tokens(tenant) else 0

    async def add_usage(self, tenant: str, *usages: Any) -> None:
        """Count upstream `usage` dicts (either API's shape) against the tenant's tokens per day, now."""
        await self.add_tokens(tenant, self.tokens_of(tenant, *usages))

    # --- background jobs ---------------------------------------------------------------------------
    async def record_job(self, tenant: str, calls: int, tokens: int) -> None:
        """A job's LLM calls and tokens, counted against the tenant's window and day once made (a job
        is not refused; the app's next requests are)."""
        rpm = self.limits(tenant).requests_per_minute
        if rpm is not None and calls > 0:
            try:
                await self.store.record_calls(tenant, calls, rpm=rpm)
            except STORE_ERRORS as exc:
                self._skipped(exc)
        await self.add_tokens(tenant, tokens)

    # --- pending comparisons (429) ----------------------------------------------------------------
    async def reserve_comparison(self, tenant: str, user: str, comparison_id: str, ttl_s: int) -> None:
        limit = self.limits(tenant).max_pending_comparisons
        try:
            wait_ms = await self.store.reserve_pending(tenant, user, comparison_id, limit=limit, ttl_s=ttl_s)
        except STORE_ERRORS as exc:
            self._metrics.quota_store_failures.inc()
            log.warning("pending comparisons not checked, the store failed: %s", described(exc))
            return
        if wait_ms:
            self.refuse(tenant, "max_pending_comparisons", wait_ms / 1000.0)

    async def admit_comparison(
        self, tenant: str, user: str, comparison_id: str, *, variants: int, ttl_s: int
    ) -> Lease:
        """A new comparison: its variants against the caps, a pending slot, one call per variant."""
        self.check_variants(tenant, variants)
        await self.reserve_comparison(tenant, user, comparison_id, ttl_s)
        try:
            return await self.admit(tenant, user, variants)
        except BaseException:
            await self.drop_comparison(tenant, user, comparison_id)
            raise

    async def keep_comparison(self, tenant: str, user: str, comparison_id: str, expires_at_s: int) -> None:
        """A comparison found again by its idempotency key stays counted as pending (its slot may have
        been dropped when the creation that stored it answered 503)."""
        try:
            await self.store.keep_pending(tenant, user, comparison_id, expires_at_ms=expires_at_s * 1000)
        except STORE_ERRORS as exc:  # the entry would have expired with the comparison anyway
            log.warning("pending comparison not kept: %s", described(exc))

    async def drop_comparison(self, tenant: str, user: str, comparison_id: str) -> None:
        try:
            await self.store.drop_pending(tenant, user, comparison_id)
        except STORE_ERRORS as exc:  # the entry expires with the comparison
            log.warning("pending comparison not dropped: %s", described(exc))
