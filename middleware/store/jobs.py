"""Job bookkeeping in Redis: our job records, each user's pending job, locks and tenant slots.

    pm:jobs:record:<id>          hash: id, kind, tenant, user, state, progress, result, error, ...
    pm:{t:u}:job-pending         the user's queued or running job id (deduplication, TTL)
    pm:{t:u}:jobs                ids of the user's jobs (deleted with their records on forget)
    pm:{t:u}:job-lock            the user's running job (mutual exclusion, TTL, re-entrant per job)
    pm:jobs:tenant-slots:<t>     sorted set: running job ids of the tenant, scored by lease expiry

The queue itself (what runs when) is the job queue library's, under its own keys.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from arq.constants import job_key_prefix
from redis.asyncio import Redis

from middleware.store import keys
from middleware.store.guard import fail_closed, resolved
from middleware.store.scripts import DELETE_IF_EQUAL

JSON_FIELDS = ("progress", "result", "error")

# Replace the pending job id only if it is still the stale one we looked at.
_SWAP_PENDING = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# KEYS[1] slots zset. ARGV: now_ms, job id, cap, expiry_ms. Expired holders (dead workers) drop out.
_ACQUIRE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
  return 1
end
return 0
"""
# KEYS[1] lock. ARGV: job id, ttl_ms. Re-entrant for the same job (its earlier try died).
_ACQUIRE_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# KEYS[1] job record. ARGV: expiry s, how many field names to delete, those names, then field/value
# pairs to set. One script, one key: atomic on a Redis Cluster as on one server.
_UPDATE = """
local n = tonumber(ARGV[2])
if n > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, 3, 2 + n)) end
if #ARGV > 2 + n then redis.call('HSET', KEYS[1], unpack(ARGV, 3 + n)) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


class JobStore:
    def __init__(self, redis: Redis, *, keep_s: int, queue_redis: Redis | None = None) -> None:
        self._redis = redis
        # The job queue library's Redis (PERSONA_JOBS_REDIS_URL): never a cluster, maybe another server.
        self._queue_redis = queue_redis if queue_redis is not None else redis
        self._keep_s = keep_s
        self._update = redis.register_script(_UPDATE)
        self._swap = redis.register_script(_SWAP_PENDING)
        self._release = redis.register_script(DELETE_IF_EQUAL)

    # --- records ------------------------------------------------------------------------------------
    async def record(self, job_id: str) -> dict[str, Any] | None:
        raw = await fail_closed(self._redis.hgetall(keys.job_record(job_id)))
        if not raw:
            return None
        record: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
        for name in JSON_FIELDS:
            if name in record:
                record[name] = orjson.loads(record[name])
        record["attempts"] = int(record.get("attempts", 0))
        return record

    async def stopped(self, job_id: str) -> bool:
        """Was the job cancelled, or its record deleted (the user forgotten)? One HMGET."""
        found_id, cancelled = await fail_closed(
            self._redis.hmget(keys.job_record(job_id), ["id", "cancelled"])
        )
        return found_id is None or bool(cancelled)

    async def update(self, job_id: str, *, clear: tuple[str, ...] = (), **fields: Any) -> None:
        """Set `fields` (None values are skipped) and remove the fields named in `clear`, in one step."""
        mapping = {
            k: orjson.dumps(v) if k in JSON_FIELDS else str(v) for k, v in fields.items() if v is not None
        }
        pairs = [item for name_value in mapping.items() for item in name_value]
        args = [self._keep_s, len(clear), *clear, *pairs]
        await fail_closed(self._update(keys=[keys.job_record(job_id)], args=args))

    async def count_attempt(self, job_id: str) -> int:
        """One more start of the job; returns how many there have been."""
        return int(await resolved(self._redis.hincrby(keys.job_record(job_id), "attempts", 1)))

    async def add_user_job(self, tenant: str, user: str, job_id: str) -> None:
        await fail_closed(self._redis.sadd(keys.user_jobs(tenant, user), job_id))

    # --- the user's (or the segment's) pending job --------------------------------------------------
    # A job is for a user, or for a segment when `segment` is given (then `user` is "").
    async def claim_pending(self, tenant: str, user: str, job_id: str, *, segment: str | None = None) -> bool:
        """Make `job_id` the user's pending job if they have none."""
        ttl_ms = int(self._keep_s * 1000)
        claimed = await fail_closed(
            self._redis.set(_pending_key(tenant, user, segment), job_id, nx=True, px=ttl_ms)
        )
        return bool(claimed)

    async def pending(self, tenant: str, user: str, *, segment: str | None = None) -> str | None:
        current = await fail_closed(self._redis.get(_pending_key(tenant, user, segment)))
        return current.decode() if current is not None else None

    async def replace_pending(
        self, tenant: str, user: str, stale: str | None, job_id: str, *, segment: str | None = None
    ) -> bool:
        """Make `job_id` the pending job if the pending one is still `stale` (or none)."""
        ttl_ms = int(self._keep_s * 1000)
        pending_key = _pending_key(tenant, user, segment)
        if stale is None:
            await fail_closed(self._redis.set(pending_key, job_id, px=ttl_ms))
            return True
        return bool(await fail_closed(self._swap(keys=[pending_key], args=[stale, job_id, ttl_ms])))

    async def release_pending(
        self, tenant: str, user: str, job_id: str, *, segment: str | None = None
    ) -> None:
        """Drop the user's pending-job mark if it is still this job's (one atomic step)."""
        await fail_closed(self._release(keys=[_pending_key(tenant, user, segment)], args=[job_id]))

    async def drop_queued(self, job_id: str) -> None:
        """Take a job out of the queue library's queue so no worker starts it."""
        await fail_closed(self._queue_redis.zrem(keys.JOB_QUEUE, job_id))
        await fail_closed(self._queue_redis.delete(job_key_prefix + job_id))

    # --- running: the user's lock and the tenant's slots (errors left to the worker's retry) ---------
    async def acquire_lock(
        self, tenant: str, user: str, job_id: str, lease_ms: int, *, segment: str | None = None
    ) -> bool:
        lock = _lock_key(tenant, user, segment)
        return bool(await resolved(self._redis.eval(_ACQUIRE_LOCK, 1, lock, job_id, str(lease_ms))))

    async def release_lock(self, tenant: str, user: str, job_id: str, *, segment: str | None = None) -> None:
        await resolved(self._redis.eval(DELETE_IF_EQUAL, 1, _lock_key(tenant, user, segment), job_id))

    async def acquire_slot(self, tenant: str, job_id: str, cap: int, lease_ms: int) -> bool:
        now = int(time.time() * 1000)
        args = (str(now), job_id, str(cap), str(now + lease_ms))
        return bool(await resolved(self._redis.eval(_ACQUIRE_SLOT, 1, keys.tenant_job_slots(tenant), *args)))

    async def release_slot(self, tenant: str, job_id: str) -> None:
        await self._redis.zrem(keys.tenant_job_slots(tenant), job_id)


def _pending_key(tenant: str, user: str, segment: str | None) -> str:
    return keys.segment_job_pending(tenant, segment) if segment else keys.job_pending(tenant, user)


def _lock_key(tenant: str, user: str, segment: str | None) -> str:
    return keys.segment_job_lock(tenant, segment) if segment else keys.job_lock(tenant, user)
