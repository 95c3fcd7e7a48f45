"""The job queue as the API and CLI see it: enqueue a refresh, read a job, cancel it.

Jobs run on arq (Redis-backed, acknowledged: a job leaves the queue only when a worker finishes it).
Our own job record (`keys.job_record`) holds what an operator sees: tenant, user, state, progress,
result, error. The arq job carries no arguments at all, only its id, so nothing arq keeps (queue
entries, results) names the user.

Deduplication: a user has at most one queued-or-running job (`keys.job_pending`): asking again
returns that job's id. A refresh trains the user's adapter too, so a pending refresh also answers a
request for adapter training.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus
from redis.asyncio import Redis

from middleware.config import Settings
from middleware.store import keys
from middleware.store.guard import fail_closed
from middleware.store.jobs import JobStore

REFRESH = "refresh_persona"
REFRESH_SEGMENT = "refresh_segment_persona"
TRAIN_ADAPTER = "train_adapter"
ACTIVE = ("queued", "running")


class JobCancelled(Exception):
    """The job was cancelled or its user forgotten while it ran: it stops without storing anything."""


CANCELLED_ERROR = {"code": "cancelled", "message": "the job was cancelled"}


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class JobQueue:
    def __init__(self, settings: Settings, redis: Redis, queue_redis: Redis | None = None) -> None:
        """`redis` holds our records; `queue_redis` (default: the same) holds arq's queue, which
        cannot live on a Redis Cluster (PERSONA_JOBS_REDIS_URL)."""
        queue_redis = queue_redis if queue_redis is not None else redis
        self.store = JobStore(redis, keep_s=settings.jobs_keep_s, queue_redis=queue_redis)
        # arq's client on our own (bounded, timed-out) connection pool.
        self.arq = ArqRedis(connection_pool=queue_redis.connection_pool, default_queue_name=keys.JOB_QUEUE)

    # --- records ------------------------------------------------------------------------------------
    async def record(self, job_id: str) -> dict[str, Any] | None:
        return await self.store.record(job_id)

    async def stopped(self, job_id: str) -> bool:
        """Was the job cancelled, or its record deleted (the user forgotten)? One HMGET."""
        return await self.store.stopped(job_id)

    async def update(self, job_id: str, *, clear: tuple[str, ...] = (), **fields: Any) -> None:
        """Set `fields` (None values are skipped) and remove the fields named in `clear`, in one step."""
        await self.store.update(job_id, clear=clear, **fields)

    # --- enqueue ------------------------------------------------------------------------------------
    async def enqueue_refresh(
        self, tenant: str, user: str, *, model: str | None = None, reason: str = "admin"
    ) -> tuple[str, bool]:
        """(job id, created). An existing queued or running job of the user is reused."""
        return await self.enqueue(REFRESH, tenant, user, model=model, reason=reason)

    async def enqueue_segment_refresh(
        self, tenant: str, segment: str, *, model: str | None = None, reason: str = "admin"
    ) -> tuple[str, bool]:
        """(job id, created): induce the segment's persona from its members' pooled pairs; an
        existing queued or running refresh of the segment is reused."""
        return await self.enqueue(REFRESH_SEGMENT, tenant, "", model=model, reason=reason, segment=segment)

    async def enqueue_adapter_training(
        self, tenant: str, user: str, *, reason: str = "admin"
    ) -> tuple[str, bool]:
        """(job id, created): train the `lora` adapter of the user's current persona version."""
        return await self.enqueue(TRAIN_ADAPTER, tenant, user, reason=reason)

    async def enqueue(
        self,
        kind: str,
        tenant: str,
        user: str,
        *,
        model: str | None = None,
        reason: str = "admin",
        segment: str | None = None,
    ) -> tuple[str, bool]:
        """A job for `user`, or for `segment` (then `user` is "")."""
        job_id = uuid.uuid4().hex
        if not await self.store.claim_pending(tenant, user, job_id, segment=segment):
            existing = await self.store.pending(tenant, user, segment=segment)
            if existing is not None and await self.is_active(existing):
                return existing, False
            if not await self.store.replace_pending(tenant, user, existing, job_id, segment=segment):
                latest = await self.store.pending(tenant, user, segment=segment)
                return (latest or existing or job_id), False
        await self.update(
            job_id,
            id=job_id,
            kind=kind,
            tenant=tenant,
            user=user,
            segment=segment,
            state="queued",
            reason=reason,
            model=model or "",
            created_at=now_iso(),
            attempts=0,
            progress={},
        )
        if segment is None:
            await self.store.add_user_job(tenant, user, job_id)
        await fail_closed(self.arq.enqueue_job(kind, _job_id=job_id))
        return job_id, True

    async def is_active(self, job_id: str) -> bool:
        record = await self.record(job_id)
        if record is None or record.get("state") not in ACTIVE:
            return False
        status = await fail_closed(Job(job_id, self.arq, _queue_name=keys.JOB_QUEUE).status())
        return status in (JobStatus.queued, JobStatus.deferred, JobStatus.in_progress)

    async def release_pending(
        self, tenant: str, user: str, job_id: str, *, segment: str | None = None
    ) -> None:
        """Drop the user's (or segment's) pending-job mark if it is still this job's (one atomic step)."""
        await self.store.release_pending(tenant, user, job_id, segment=segment)

    # --- read / cancel ------------------------------------------------------------------------------
    async def get(self, job_id: str) -> dict[str, Any] | None:
        """The job record, reconciled with arq (a job arq gave up on reads as failed)."""
        record = await self.record(job_id)
        if record is None or record.get("state") not in ACTIVE:
            return record
        job = Job(job_id, self.arq, _queue_name=keys.JOB_QUEUE)
        # arq's reads go through the same guard: a Redis outage is a 503, never a 500
        status = await fail_closed(job.status())
        if status in (JobStatus.complete, JobStatus.not_found):
            info = await fail_closed(job.result_info())
            if info is None or not info.success:
                outcome = info.result if info is not None else None
                if isinstance(outcome, (asyncio.CancelledError, JobCancelled)):
                    error = dict(CANCELLED_ERROR)
                else:
                    problem = repr(outcome) if info is not None else "the job is gone from the queue"
                    error = {"code": "job_failed", "message": problem}
                record.update(state="failed", error=error)
                await self.update(job_id, state="failed", error=error, finished_at=now_iso())
        return record

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Stop a queued or running job; the current persona is left as it was."""
        record = await self.record(job_id)
        if record is None or record.get("state") not in ACTIVE:
            return record
        error = dict(CANCELLED_ERROR)
        await self.update(job_id, state="failed", error=error, finished_at=now_iso(), cancelled=1)
        # Queued: it never starts. Running: the worker's next checkpoint sees the flag and stops.
        await self.store.drop_queued(job_id)
        await self.release_pending(
            record["tenant"], record["user"], job_id, segment=record.get("segment") or None
        )
        record.update(state="failed", error=error, cancelled="1")
        return record

    async def wait(self, job_id: str, timeout: float = 30.0, interval: float = 0.1) -> dict[str, Any] | None:
        """Poll until the job is finished (for the CLI and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            record = await self.get(job_id)
            if record is None or record.get("state") not in ACTIVE or time.monotonic() > deadline:
                return record
            await asyncio.sleep(interval)
