"""A failover drill: load through the real proxy while the master holding one user's data is killed
with SIGKILL; the topology's replica takes over (nothing of ours is restarted).

Shared by tests/test_failover.py (asserts the promises) and benchmarks/failover.py (prints figures).

The load: chat completions and Responses calls for the user (4 connections), preference writes for
the user (one writer, each write with its own id), and a persona refresh job running on an
in-process worker (its upstream calls slowed down so the kill lands while it runs). A supervisor
would start the killed server again once its replica has taken over; the drill does the same (it
comes back as a replica and the writes that need one can be acknowledged again).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from middleware.config import Settings
from middleware.induction.jobs import build_worker
from middleware.store import keys
from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import FAST_JOBS, store_services
from tests.support.dropin import give_persona
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import APP_KEY_A, proxy_settings, start_proxy
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import LocalCluster, SentinelGroup

TENANT, USER = "tenant-a", "failover-user"
CHAT_CONNECTIONS = 4


@dataclass
class Call:
    started: float
    ok: bool
    personalized: bool


@dataclass
class Figures:
    topology: str
    kill_at: float = 0.0  # once the killed server is gone (the process reaped)
    persona_lost: bool = False  # an answer without persona after the kill was seen
    persona_back_s: float | None = None  # first personalized answer after the kill, from the kill
    writes_back_s: float | None = None  # first acknowledged preference write after the kill
    chats: list[Call] = field(default_factory=list)
    writes_acked: list[str] = field(default_factory=list)
    writes_refused: int = 0  # 503 answers
    writes_other: list[int] = field(default_factory=list)  # any other status: a broken promise
    writes_found: int = 0
    job_state: str | None = None
    job_attempts: int = 0
    worker_alive: bool = False
    # how many cancellations the worker took to stop at the end (1 expected; None: it never stopped)
    worker_stop_requests: int | None = None

    def window(self) -> list[Call]:
        end = self.kill_at + (self.persona_back_s or 0.0)
        return [c for c in self.chats if self.kill_at <= c.started <= end]

    def chat_success_rate(self) -> float:
        calls = self.window()
        return sum(c.ok for c in calls) / len(calls) if calls else 1.0

    def summary(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "window_s": self.persona_back_s,
            "chat_calls_in_window": len(self.window()),
            "chat_success_in_window": self.chat_success_rate(),
            "chat_success_overall": sum(c.ok for c in self.chats) / max(1, len(self.chats)),
            "writes_back_s": self.writes_back_s,
            "writes_acknowledged": len(self.writes_acked),
            "writes_found": self.writes_found,
            "writes_refused_503": self.writes_refused,
            "writes_other_status": self.writes_other,
            "job": self.job_state,
            "job_attempts": self.job_attempts,
            "worker_alive": self.worker_alive,
            "worker_stop_requests": self.worker_stop_requests,
        }


async def _chat_loop(base: str, figures: Figures, stop: asyncio.Event, n: int) -> None:
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {APP_KEY_A}"}) as http:
        i = 0
        while not stop.is_set():
            i += 1
            started = time.monotonic()
            try:
                if (i + n) % 2:
                    body: dict[str, Any] = {
                        "model": "fake-model",
                        "messages": [{"role": "user", "content": "q"}],
                    }
                    r = await http.post("/v1/chat/completions", json={**body, "user": USER}, timeout=10)
                else:
                    r = await http.post(
                        "/v1/responses", json={"model": "fake-model", "input": "q", "user": USER}, timeout=10
                    )
                ok = r.status_code == 200
                personalized = r.headers.get("x-persona-version", "none") != "none"
            except httpx.HTTPError:
                ok = personalized = False
            figures.chats.append(Call(started, ok, personalized))
            if started > figures.kill_at > 0 and figures.persona_back_s is None:
                if not personalized:
                    figures.persona_lost = True
                elif figures.persona_lost:
                    figures.persona_back_s = started - figures.kill_at
            await asyncio.sleep(0.01)


async def _write_loop(base: str, figures: Figures, stop: asyncio.Event) -> None:
    pair = make_pairs(USER, 1)[0].model_dump(mode="json", include={"context", "chosen", "rejected"})
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {APP_KEY_A}"}) as http:
        while not stop.is_set():
            write_id = uuid.uuid4().hex
            started = time.monotonic()
            try:
                r = await http.post(
                    "/v1/preferences",
                    json={**pair, "user": USER, "item_id": write_id},
                    headers={"Idempotency-Key": write_id},
                    timeout=10,
                )
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            if status == 201:
                figures.writes_acked.append(write_id)
                if started > figures.kill_at > 0 and figures.writes_back_s is None:
                    figures.writes_back_s = started - figures.kill_at
            elif status == 503:
                figures.writes_refused += 1
            else:
                figures.writes_other.append(status)
            await asyncio.sleep(0.02)


async def drill(
    topology: str,
    redis_url: str,
    jobs_url: str,
    upstream: FakeUpstream,
    kill: Callable[[], None],
    restart_when_replaced: Callable[[], bool],
    *,
    before_s: float = 2.0,
    max_window_s: float = 20.0,
    after_s: float = 3.0,
) -> Figures:
    """Run the load, `kill()` the user's master after `before_s`, and measure until persona and
    writes are back (bounded by `max_window_s`) plus `after_s`; then let the job finish."""
    upstream.responder = InductionResponder().slowed(0.15)
    settings: Settings = proxy_settings(
        redis_url,
        upstream,
        **{**FAST_JOBS, "jobs_retry_defer_s": 0.5},
        jobs_redis_url=jobs_url,
        redis_wait_replicas=1,
        redis_wait_timeout_ms=1000,
    )
    figures = Figures(topology)
    async with store_services(settings) as services:
        await services.preferences.add_pairs(TENANT, USER, make_pairs(USER, 8))
    worker = build_worker(settings, handle_signals=False)
    worker_task = asyncio.create_task(worker.async_run())
    stop = asyncio.Event()
    with start_proxy(settings) as proxy:
        await asyncio.to_thread(give_persona, proxy, USER)
        loads = [
            asyncio.create_task(_chat_loop(proxy.url, figures, stop, n)) for n in range(CHAT_CONNECTIONS)
        ]
        loads.append(asyncio.create_task(_write_loop(proxy.url, figures, stop)))
        admin = httpx.AsyncClient(base_url=proxy.url, headers=proxy.admin_headers(TENANT), timeout=10)
        try:
            await asyncio.sleep(before_s / 2)
            job_id = (await admin.post(f"/admin/users/{USER}/persona/refresh")).json()["job_id"]
            await asyncio.sleep(before_s / 2)
            kill()
            figures.kill_at = time.monotonic()
            deadline = figures.kill_at + max_window_s
            restarted = False
            while time.monotonic() < deadline and (
                figures.persona_back_s is None or figures.writes_back_s is None
            ):
                if not restarted and await asyncio.to_thread(restart_when_replaced):
                    restarted = True
                await asyncio.sleep(0.05)
            await asyncio.sleep(after_s)
            stop.set()
            await asyncio.gather(*loads)
            job_deadline = time.monotonic() + 30
            while time.monotonic() < job_deadline:
                job = (await admin.get(f"/admin/jobs/{job_id}")).json()
                figures.job_state, figures.job_attempts = job.get("state"), int(job.get("attempts", 0))
                if figures.job_state not in ("queued", "running"):
                    break
                await asyncio.sleep(0.2)
            figures.worker_alive = not worker_task.done()
            async with store_services(settings) as services:
                records = await services.preferences.records(TENANT, USER)
                stored = {r.data.get("item_id") for r in records}
                figures.writes_found = sum(1 for w in figures.writes_acked if w in stored)
        finally:
            stop.set()
            await admin.aclose()
            figures.worker_stop_requests = await _stop(worker_task)
            # arq's close waits for its job tasks; a job deferred through the failover may still be in
            # its back-off: the figures are taken, so give up on a slow close instead of failing
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.close(), 15)
    return figures


async def _stop(task: asyncio.Task[None], tries: int = 3, wait_s: float = 10.0) -> int | None:
    """Cancel the worker's task until it ends (bounded: a worker that ignores its stop fails the
    drill in seconds, instead of holding it until its time limit); how many cancellations it took."""
    for attempt in range(1, tries + 1):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=wait_s)
        if done:
            return attempt
    return None


def kill_master(current_master: Callable[[], RedisServer]) -> tuple[Callable[[], None], Callable[[], bool]]:
    """`kill()`: kill -9 the server `current_master()` names. `restart_when_replaced()`: once another
    server is named master, start the killed one again (it comes back as a replica); says if it did."""
    victim: list[RedisServer] = []

    def kill() -> None:
        victim.append(current_master())
        victim[0].kill()

    def restart_when_replaced() -> bool:
        try:
            now = current_master()
        except (redis.RedisError, OSError, LookupError, StopIteration):  # a moment without an answer
            return False
        if now is victim[0]:
            return False
        victim[0].restart()
        return True

    return kill, restart_when_replaced


def cluster_kill(cluster: LocalCluster) -> tuple[Callable[[], None], Callable[[], bool]]:
    """The master of the user's slot."""
    return kill_master(lambda: cluster.master_of(keys.persona_current(TENANT, USER)))


def sentinel_kill(group: SentinelGroup) -> tuple[Callable[[], None], Callable[[], bool]]:
    """The master the sentinels name."""
    return kill_master(group.master)
