"""Quota counters in Redis: one atomic script admits a request against every limit at once.

Why a script of our own rather than the `limits` library: `limits` (its moving window is the same
list-of-timestamps log used here) takes one round trip per limit and cannot check several limits
atomically, so a request refused by the per-user limit would still have used up the tenant's. It also
stamps entries with each process's own clock. Here one EVALSHA checks the tenant's and the user's
moving windows, the tenant's in-flight leases and its tokens of the day, records the call only when
all of them allow it, and reads the clock from Redis (`TIME`), so every proxy process agrees. It is
sent in the same pipeline as the persona reads, so metering costs no extra round trip.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from middleware.store import keys
from middleware.store.connection import one_slot_pipeline
from middleware.store.guard import resolved
from middleware.store.pipelines import Command, ScriptPipelines
from middleware.store.policy import Posteriors, policy_read_commands, posteriors_of
from middleware.store.segments import RESOLVE, PersonaReads, read_commands, reads_of
from middleware.store.write_behind import WriteBehind

WINDOW_MS = 60_000
# Reasons, in the order the script returns them.
REASONS = ("", "requests_per_minute", "user_requests_per_minute", "concurrency", "tokens_per_day")

# KEYS: tenant log, user log, in-flight set, tokens of the day.
# ARGV: cost, rpm, user rpm, concurrency, lease token, lease ms, tokens per day, ms to the day's end,
# window ms (60000; "requests per minute" counts calls in the window before now, newest first).
# A limit of 0 is "none". Returns {0, 0} when admitted, else {reason, retry after in ms}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local window = tonumber(ARGV[9])
local tokens = tonumber(ARGV[7])
if tokens > 0 then
  local used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used >= tokens then return {4, tonumber(ARGV[8])} end
end
local function wait(key, limit)
  if limit <= 0 then return 0 end
  if cost > limit then return window end
  local entry = redis.call('LINDEX', key, limit - cost)
  if entry and tonumber(entry) > now - window then return tonumber(entry) + window - now end
  return 0
end
local rpm, urpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local w = wait(KEYS[1], rpm)
if w > 0 then return {1, w} end
w = wait(KEYS[2], urpm)
if w > 0 then return {2, w} end
local concurrency = tonumber(ARGV[4])
if concurrency > 0 then
  local lease = tonumber(ARGV[6])
  -- leases past their time (a process that died mid-call) are dropped only when they would refuse
  if redis.call('ZCARD', KEYS[3]) >= concurrency then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
    if redis.call('ZCARD', KEYS[3]) >= concurrency then return {3, 1000} end
  end
  redis.call('ZADD', KEYS[3], now + lease, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], lease)
end
local function record(key, limit)
  if limit <= 0 then return end
  local length = 0
  for i = 1, cost do length = redis.call('LPUSH', key, now) end
  if length > limit then redis.call('LTRIM', key, 0, limit - 1) end
  redis.call('PEXPIRE', key, window)
end
record(KEYS[1], rpm)
record(KEYS[2], urpm)
return {0, 0}
"""

# KEYS: tenant log. ARGV: calls, rpm, window ms. Records calls already made (background jobs) without
# refusing them, so they count against the app's next requests.
RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[2])
for i = 1, math.min(tonumber(ARGV[1]), limit) do redis.call('LPUSH', KEYS[1], now) end
redis.call('LTRIM', KEYS[1], 0, limit - 1)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 0
"""

# KEYS: the user's pending set. ARGV: max, comparison id, ttl ms. Returns 0 when reserved, else the ms
# until the oldest pending comparison expires.
RESERVE_PENDING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) - now)
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 0
"""


# KEYS: the in-flight set, the tokens of the day. ARGV: tokens to add, the day key's ttl in s, then
# the leases to give back. What the calls that ended since the last flush leave behind (`WriteBehind`).
SETTLE = """
local tokens = tonumber(ARGV[1])
if tokens > 0 and redis.call('INCRBY', KEYS[2], tokens) == tokens then
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))  -- the day's first tokens: the key outlives the day
end
if #ARGV > 2 then redis.call('ZREM', KEYS[1], unpack(ARGV, 3)) end
return 0
"""
SETTLE_LEASES_MAX = 1000  # leases per SETTLE call (Lua's unpack has a stack limit)
TOKENS_TTL_S = 2 * 86400


class RateLimitStore:
    def __init__(
        self, redis: Redis, write_behind: WriteBehind | None = None, *, reads: Redis | None = None
    ) -> None:
        """`reads`: the client of `admit_and_read` (the hot path's, bounded by its caller's timeout)."""
        self._redis = redis
        # the writes after an answer; shared with the other parts that have some (`Services`)
        self._write_behind = write_behind = write_behind or WriteBehind(redis)
        self._settle_sha = write_behind.script(SETTLE)
        # (tenant, day) -> tokens to add and leases to give back, until the next flush
        self._settling: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self._settle_now: AsyncScript = redis.register_script(SETTLE)
        self._reserve: AsyncScript = redis.register_script(RESERVE_PENDING)
        self._record: AsyncScript = redis.register_script(RECORD)
        # the hot path's admissions (alone, or with the persona reads): on the hot client
        self._chat_pipelines = ScriptPipelines(reads or redis)
        self._admit_sha = self._chat_pipelines.add(ADMIT)
        self._resolve_sha = self._chat_pipelines.add(RESOLVE)

    @staticmethod
    def admit_call(
        tenant: str,
        user: str | None,
        *,
        cost: int,
        rpm: int,
        user_rpm: int,
        concurrency: int,
        lease: str,
        lease_ms: int,
        tokens_per_day: int,
        day: str,
        ms_to_day_end: int,
        window_ms: int = WINDOW_MS,
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of one admission (for `admit`, or a pipeline built elsewhere)."""
        user_key = keys.user_rate_log(tenant, user) if user is not None else keys.rate_log(tenant)
        return (
            [keys.rate_log(tenant), user_key, keys.in_flight(tenant), keys.tokens_day(tenant, day)],
            [
                cost,
                rpm,
                user_rpm if user is not None else 0,
                concurrency,
                lease,
                lease_ms,
                tokens_per_day,
                ms_to_day_end,
                window_ms,
            ],
        )

    async def admit(self, call: tuple[list[str], list[Any]]) -> tuple[int, int]:
        """(reason index, retry after ms); (0, 0) when admitted. Store errors propagate; on the hot
        client, the caller bounds the time."""
        [(reason, wait_ms)] = await self._chat_pipelines.run([self._admit_command(call)])
        return int(reason), int(wait_ms)

    def _admit_command(self, call: tuple[list[str], list[Any]]) -> Command:
        return ("EVALSHA", self._admit_sha, len(call[0]), *call[0], *call[1])

    async def admit_and_read(
        self,
        call: tuple[list[str], list[Any]],
        tenant: str,
        user: str,
        segment: str | None,
        *,
        policy: bool = False,
    ) -> tuple[int, int, PersonaReads, tuple[Posteriors, Posteriors] | None]:
        """One round trip: the admission and the persona reads of the chat path (the heads of the
        user's current persona and context hash, and of the segment's or tenant default's,
        `store/segments.py`) and, with `policy`, the user's and the tenant's auto-mode posteriors
        (`store/policy.py`; None without)."""
        # Each part's replies start where its commands do, read by the module that lists them.
        commands: list[Command] = [self._admit_command(call)]
        reads_at = len(commands)
        commands += read_commands(self._resolve_sha, tenant, user, segment)
        policy_at = len(commands)
        if policy:
            commands += policy_read_commands(tenant, user)
        replies = await self._chat_pipelines.run(commands)
        reason, wait_ms = replies[0]
        posteriors = posteriors_of(replies, policy_at) if policy else None
        return int(reason), int(wait_ms), reads_of(replies, reads_at, tenant, user), posteriors

    async def record_calls(self, tenant: str, calls: int, *, rpm: int, window_ms: int = WINDOW_MS) -> None:
        await self._record(keys=[keys.rate_log(tenant)], args=[calls, rpm, window_ms])

    async def release(self, tenant: str, lease: str) -> None:
        await resolved(self._redis.zrem(keys.in_flight(tenant), lease))

    def settle_later(self, tenant: str, day: str, tokens: int, lease: str | None) -> None:
        """Count a finished call's tokens and give back its lease, written behind its answer: the
        calls that end before the next flush share one SETTLE per tenant."""
        added, leases = self._settling.get((tenant, day), (0, []))
        if lease is not None:
            leases.append(lease)
        self._settling[(tenant, day)] = (added + max(0, tokens), leases)
        self._write_behind.soon(self._settle_commands)

    def _settle_commands(self) -> list[Command]:
        settling, self._settling = self._settling, {}
        commands: list[Command] = []
        for (tenant, day), (tokens, leases) in settling.items():
            keys_ = (keys.in_flight(tenant), keys.tokens_day(tenant, day))
            for start in range(0, max(1, len(leases)), SETTLE_LEASES_MAX):
                chunk = leases[start : start + SETTLE_LEASES_MAX]
                commands.append(("EVALSHA", self._settle_sha, 2, *keys_, tokens, TOKENS_TTL_S, *chunk))
                tokens = 0  # counted once, with the first chunk
        return commands

    async def add_tokens(self, tenant: str, day: str, tokens: int) -> None:
        """Count `tokens` now (a call that is not answered through the write-behind)."""
        day_keys = [keys.in_flight(tenant), keys.tokens_day(tenant, day)]
        await self._settle_now(keys=day_keys, args=[tokens, TOKENS_TTL_S])

    async def tokens_used(self, tenant: str, day: str) -> int:
        value = await resolved(self._redis.get(keys.tokens_day(tenant, day)))
        return int(value or 0)

    async def reserve_pending(
        self, tenant: str, user: str, comparison_id: str, *, limit: int, ttl_s: int
    ) -> int:
        """Reserve a pending-comparison slot: 0, or the ms until one frees up."""
        wait_ms = await self._reserve(
            keys=[keys.pending_comparisons(tenant, user)], args=[limit, comparison_id, ttl_s * 1000]
        )
        return int(wait_ms)

    async def keep_pending(self, tenant: str, user: str, comparison_id: str, *, expires_at_ms: int) -> None:
        """Count a stored comparison as pending again (no limit: it exists already), e.g. when a retry
        finds the comparison a timed-out creation stored after its slot had been dropped."""
        key = keys.pending_comparisons(tenant, user)
        pipe = one_slot_pipeline(self._redis)
        pipe.zadd(key, {comparison_id: expires_at_ms}, nx=True)
        pipe.pexpireat(key, expires_at_ms, gt=True)
        pipe.pexpireat(key, expires_at_ms, nx=True)
        await pipe.execute()

    async def drop_pending(self, tenant: str, user: str, comparison_id: str) -> None:
        await resolved(self._redis.zrem(keys.pending_comparisons(tenant, user), comparison_id))
