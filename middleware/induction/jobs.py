"""`persona worker`: arq workers that run persona refreshes.

- Acknowledged: arq keeps a job in its queue until a worker finishes it; a worker killed mid-job
  leaves an in-progress marker that expires after `jobs_timeout_s + jobs_in_progress_grace_s`, then
  any worker runs the job again (and keeps the versions the dead try already stored: `provenance.made_by`).
- Retried: upstream/store failures are retried with back-off up to `jobs_max_attempts` starts;
  bad data, budgets and malformed LLM output fail at once with a clear error.
- Deduplicated per user at enqueue time (`JobQueue.enqueue_refresh`), and mutually exclusive per
  user while running (`keys.job_lock`, re-entrant for the same job id after a crash).
- Per-tenant concurrency cap (`keys.tenant_job_slots`): a job over the cap is deferred, not failed.
- Optional automatic refresh: with `auto_refresh_after = N > 0`, a cron job enqueues a refresh for
  every user with at least N new pairs since their last refresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from arq import Retry, cron
from arq.connections import ArqRedis
from arq.worker import Worker, func

from middleware.config import Settings
from middleware.errors import NotFound, PersonaError, StoreUnavailable, UpstreamError
from middleware.induction.adapters import AdapterTrainer, adapter_wanted
from middleware.induction.contexts import induce_contexts
from middleware.induction.pipeline import Induction
from middleware.induction.queue import (
    REFRESH,
    REFRESH_SEGMENT,
    TRAIN_ADAPTER,
    JobCancelled,
    JobQueue,
    now_iso,
)
from middleware.induction.resilient import REDIS_DOWN, ResilientWorker, supervise
from middleware.services import Services, build_services
from middleware.store import keys
from middleware.store.connection import create_jobs_redis
from middleware.store.guard import described
from middleware.store.personas import PersonaStore
from middleware.store.preferences import PreferenceStore
from middleware.store.segments import SegmentStore
from middleware.store.users import UserIndex

log = logging.getLogger("middleware.jobs")
TRANSIENT = (UpstreamError, StoreUnavailable)


def lease_ms(settings: Settings) -> int:
    return int((settings.jobs_timeout_s + settings.jobs_in_progress_grace_s) * 1000)


JobBody = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""A job's work: (job id, job record) -> result."""


# --- the arq jobs: the worker's entry points, which hand each step only what it uses ----------------
async def refresh_persona(ctx: dict[str, Any]) -> dict[str, Any]:
    """The arq job: one persona refresh. Its only input is the job id; the rest is in our record."""
    services: Services = ctx["services"]
    body = partial(run_refresh, services.jobs, services.settings, services.induction, services.adapters)
    return await run_user_job(services.jobs, services.settings, ctx["job_id"], body)


async def refresh_segment_persona(ctx: dict[str, Any]) -> dict[str, Any]:
    """The arq job: one segment persona refresh, from its members' pooled pairs."""
    services: Services = ctx["services"]
    body = partial(
        run_segment_refresh, services.jobs, services.settings, services.induction, services.segments
    )
    return await run_user_job(services.jobs, services.settings, ctx["job_id"], body)


async def train_adapter(ctx: dict[str, Any]) -> dict[str, Any]:
    """The arq job: train the `lora` adapter of the user's current persona version (no induction)."""
    services: Services = ctx["services"]
    body = partial(
        run_adapter_training, services.jobs, services.settings, services.personas, services.adapters
    )
    return await run_user_job(services.jobs, services.settings, ctx["job_id"], body)


async def run_user_job(queue: JobQueue, settings: Settings, job_id: str, body: JobBody) -> dict[str, Any]:
    """Run `body` for the job's user; a Redis outage it could not record puts the job back on the
    queue (if Redis is still away, arq's in-progress marker expires and the job runs again)."""
    try:
        return await run_locked(queue, settings, job_id, body)
    except REDIS_DOWN as exc:
        log.warning("job %s interrupted by a Redis outage (%s): queued again", job_id, described(exc))
        raise Retry(defer=settings.jobs_retry_defer_s) from exc


async def run_locked(queue: JobQueue, settings: Settings, job_id: str, body: JobBody) -> dict[str, Any]:
    """Run `body` for the job's user under the user's lock and one of the tenant's job slots."""
    record = await queue.record(job_id)
    if record is None or record.get("cancelled") or record.get("state") not in ("queued", "running"):
        return {"status": "skipped"}
    tenant, user, segment = record["tenant"], record["user"], record.get("segment") or None
    lease = lease_ms(settings)
    jobs = queue.store

    if not await jobs.acquire_lock(tenant, user, job_id, lease, segment=segment):
        raise Retry(defer=settings.jobs_retry_defer_s)
    try:
        if not await jobs.acquire_slot(tenant, job_id, settings.jobs_tenant_concurrency, lease):
            raise Retry(defer=settings.jobs_retry_defer_s)
        try:
            return await body(job_id, record)
        finally:
            await jobs.release_slot(tenant, job_id)
    finally:
        await jobs.release_lock(tenant, user, job_id, segment=segment)


async def begin_attempt(
    queue: JobQueue, settings: Settings, job_id: str, record: dict[str, Any]
) -> tuple[int, dict[str, Any] | None]:
    """Count this attempt and mark the job running; past `jobs_max_attempts`, the job fails instead and
    its result comes back as the second value."""
    attempts = await queue.store.count_attempt(job_id)
    if attempts > settings.jobs_max_attempts:
        error = {
            "code": "too_many_attempts",
            "message": f"gave up after {settings.jobs_max_attempts} attempts",
        }
        return attempts, await finish(queue, record, job_id, "failed", error=error)
    await queue.update(job_id, state="running", started_at=now_iso())
    return attempts, None


PROGRESS_EVERY_S = 0.2
"""A job's progress is written into its record at most this often (see `progress_reporter`)."""

ProgressWriter = Callable[[dict[str, Any]], Awaitable[None]]


def progress_reporter(
    queue: JobQueue,
    job_id: str,
    *,
    cancels: bool = True,
    every_s: float = PROGRESS_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
) -> ProgressWriter:
    """The `progress` callback of one job: each event goes into the job's record, at most once every
    `every_s`. An event that starts a stage, completes its count (`done == total`) or has no count is
    always written, so the record never stays behind at the end of a stage.

    A stopped job (cancelled, or its user forgotten) gets no more writes. With `cancels` the callback
    then raises `JobCancelled`, which ends the run at its next step; without, the caller stops by
    itself (adapter training first tells its thread)."""
    last_stage: Any = None
    last_write: float | None = None

    async def progress(event: dict[str, Any]) -> None:
        nonlocal last_stage, last_write
        if await queue.stopped(job_id):
            if cancels:
                raise JobCancelled()
            return
        now, stage = clock(), event.get("stage")
        due = last_write is None or now - last_write >= every_s
        if due or stage != last_stage or event.get("done") == event.get("total"):
            last_stage, last_write = stage, now
            await queue.update(job_id, progress=event)

    return progress


async def run_refresh(
    queue: JobQueue,
    settings: Settings,
    induction: Induction,
    adapters: AdapterTrainer,
    job_id: str,
    record: dict[str, Any],
) -> dict[str, Any]:
    tenant, user = record["tenant"], record["user"]
    attempts, gave_up = await begin_attempt(queue, settings, job_id, record)
    if gave_up is not None:
        return gave_up
    progress = progress_reporter(queue, job_id)
    try:
        model = record.get("model") or None
        pairs = await induction.read_pairs(tenant, user)  # once, for every step below
        result = await induction.induce(
            tenant, user, pairs=pairs, model=model, job_id=job_id, progress=progress
        )
        # The context personas and their router, after the general persona (README "Contexts").
        contexts = await induce_contexts(
            induction, tenant, user, pairs=pairs.pairs, model=model, job_id=job_id, progress=progress
        )
        result = {**result, **contexts}
    except JobCancelled:
        return {"status": "cancelled"}
    except PersonaError as exc:
        return await retry_or_fail(queue, record, job_id, exc, attempts, settings)
    # The persona is stored; the user's lora adapter follows it (never fails the refresh).
    result = {**result, **await adapters.after_refresh(tenant, user, result, pairs=pairs.pairs)}
    return await finish(queue, record, job_id, "complete", result=result)


async def run_segment_refresh(
    queue: JobQueue,
    settings: Settings,
    induction: Induction,
    segments: SegmentStore,
    job_id: str,
    record: dict[str, Any],
) -> dict[str, Any]:
    tenant, segment = record["tenant"], record["segment"]
    attempts, gave_up = await begin_attempt(queue, settings, job_id, record)
    if gave_up is not None:
        return gave_up
    progress = progress_reporter(queue, job_id)
    try:
        if await segments.get(tenant, segment) is None:
            raise NotFound(f"segment {segment!r} does not exist (deleted while queued?)", param="segment")
        members = await segments.members(tenant, segment)
        result = await induction.induce_segment(
            tenant, segment, members, model=record.get("model") or None, job_id=job_id, progress=progress
        )
    except JobCancelled:
        return {"status": "cancelled"}
    except PersonaError as exc:
        return await retry_or_fail(queue, record, job_id, exc, attempts, settings)
    return await finish(queue, record, job_id, "complete", result=result)


async def run_adapter_training(
    queue: JobQueue,
    settings: Settings,
    personas: PersonaStore,
    adapters: AdapterTrainer,
    job_id: str,
    record: dict[str, Any],
) -> dict[str, Any]:
    tenant, user = record["tenant"], record["user"]
    attempts = await queue.store.count_attempt(job_id)
    await queue.update(job_id, state="running", started_at=now_iso())
    why_not = adapter_wanted(settings, asked=True)
    if why_not is not None:
        error = {"code": "lora_unavailable", "message": f"no lora adapter trained: {why_not}"}
        return await finish(queue, record, job_id, "failed", error=error)
    persona = await personas.get(tenant, user)
    if persona is None:
        error = {"code": "not_found", "message": f"user {user!r} has no persona to train an adapter beside"}
        return await finish(queue, record, job_id, "failed", error=error)
    result = {"version": persona.version, "version_id": persona.version_id}
    # training stops by itself on a cancel (`stopped=`): its progress only stops writing
    progress = progress_reporter(queue, job_id, cancels=False)
    try:
        facts = await adapters.train_and_store(
            tenant, user, persona.version, result, stopped=lambda: queue.stopped(job_id), progress=progress
        )
    except JobCancelled:
        return {"status": "cancelled"}
    except PersonaError as exc:
        return await retry_or_fail(queue, record, job_id, exc, attempts, settings)
    except Exception as exc:  # a training error is this job's failure, reported, not a crash
        log.warning("lora adapter training failed for %s/%s: %s", tenant, user, exc)
        error = {"code": "adapter_training_failed", "message": f"{type(exc).__name__}: {exc}"}
        return await finish(queue, record, job_id, "failed", error=error)
    return await finish(queue, record, job_id, "complete", result={**result, "adapter": facts})


async def retry_or_fail(
    queue: JobQueue, record: dict[str, Any], job_id: str, exc: PersonaError, attempts: int, settings: Settings
) -> dict[str, Any]:
    """A transient failure (upstream, store) goes back on the queue while attempts remain; any other
    failure, or the last attempt's, fails the job."""
    if isinstance(exc, TRANSIENT) and attempts < settings.jobs_max_attempts:
        await queue.update(job_id, state="queued", error=error_of(exc))
        raise Retry(defer=settings.jobs_retry_defer_s * attempts) from exc
    return await finish(queue, record, job_id, "failed", error=error_of(exc))


def error_of(exc: PersonaError) -> dict[str, Any]:
    return {"code": exc.code, "type": exc.error_type, "message": exc.message}


async def finish(
    queue: JobQueue,
    record: dict[str, Any],
    job_id: str,
    state: str,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    current = await queue.record(job_id)
    if current is None:  # the user was forgotten meanwhile: leave no trace
        return {"status": "skipped"}
    if current.get("cancelled"):  # cancelled while it ran: the cancel's record stands
        return {"status": "cancelled"}
    # A success clears the error an earlier attempt left behind.
    clear = () if error else ("error",)
    await queue.update(job_id, state=state, result=result, error=error, finished_at=now_iso(), clear=clear)
    await queue.release_pending(
        record["tenant"], record["user"], job_id, segment=record.get("segment") or None
    )
    return {"status": state, **({"error": error} if error else {})}


async def auto_refresh(ctx: dict[str, Any]) -> int:
    """Enqueue refreshes for users with at least `auto_refresh_after` new pairs; returns how many."""
    services: Services = ctx["services"]
    return await enqueue_due_refreshes(services.settings, services.users, services.preferences, services.jobs)


async def enqueue_due_refreshes(
    settings: Settings, users: UserIndex, preferences: PreferenceStore, queue: JobQueue
) -> int:
    if settings.auto_refresh_after <= 0:
        return 0
    enqueued = 0
    async for tenant, user in users.all_users():
        if await maybe_auto_refresh(settings, preferences, queue, tenant, user):
            enqueued += 1
    return enqueued


async def maybe_auto_refresh(
    settings: Settings, preferences: PreferenceStore, queue: JobQueue, tenant: str, user: str
) -> bool:
    """Enqueue a refresh if the user has `auto_refresh_after` new pairs (callable after a write)."""
    threshold = settings.auto_refresh_after
    if threshold <= 0:
        return False
    if await preferences.pairs_since_refresh(tenant, user) < threshold:
        return False
    _, created = await queue.enqueue_refresh(tenant, user, reason="auto")
    return created


async def on_startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    services = build_services(settings)
    ctx["services"] = services


async def on_shutdown(ctx: dict[str, Any]) -> None:
    services: Services | None = ctx.get("services")
    if services is not None:
        await services.close()


def cron_seconds(every_s: float) -> set[int]:
    step = max(1, min(60, int(every_s)))
    return set(range(0, 60, step))


def build_worker(settings: Settings, **overrides: Any) -> Worker:
    cron_jobs = []
    if settings.auto_refresh_after > 0:
        cron_jobs.append(
            cron(auto_refresh, second=cron_seconds(settings.auto_refresh_poll_s), unique=True, timeout=60)
        )
    options: dict[str, Any] = {
        "functions": [
            # Attempts are counted by us (run_refresh); arq's own limit only stops endless deferral.
            func(refresh_persona, name=REFRESH, max_tries=1000, timeout=settings.jobs_timeout_s),
            func(train_adapter, name=TRAIN_ADAPTER, max_tries=1000, timeout=settings.jobs_timeout_s),
            func(
                refresh_segment_persona, name=REFRESH_SEGMENT, max_tries=1000, timeout=settings.jobs_timeout_s
            ),
        ],
        "cron_jobs": cron_jobs,
        # The service's own pool: connect and socket timeouts, so a paused Redis cannot hang the worker.
        # The queue's Redis is PERSONA_JOBS_REDIS_URL (standalone or Sentinel, never a cluster).
        "redis_pool": ArqRedis(connection_pool=create_jobs_redis(settings).connection_pool),
        "queue_name": keys.JOB_QUEUE,
        "health_check_key": f"{keys.JOB_QUEUE}:health-check",
        "max_jobs": settings.worker_max_jobs,
        "job_timeout": settings.jobs_timeout_s,
        "keep_result": settings.jobs_keep_s,
        "poll_delay": settings.worker_poll_s,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "ctx": {"settings": settings},
        "allow_abort_jobs": True,
    }
    options.update(overrides)
    worker = ResilientWorker(**options)
    # A dead worker's job becomes runnable again this long after it started (arq adds 10 s).
    worker.in_progress_timeout_s = settings.jobs_timeout_s + settings.jobs_in_progress_grace_s
    return worker


def run_worker(settings: Settings) -> None:
    """Run a worker until SIGINT/SIGTERM (arq finishes or re-queues running jobs on the way out);
    Redis outages are waited out (`middleware.induction.resilient`)."""
    log.info("persona worker started (queue %s, max_jobs %d)", keys.JOB_QUEUE, settings.worker_max_jobs)
    asyncio.run(supervise(lambda: build_worker(settings)))
