"""An arq worker that outlives Redis: an outage is logged and waited out with back-off, never fatal.

arq's poll loop ends the process on the first connection error (a Redis restart), and with no socket
timeout it hangs on a paused Redis. Here the worker talks to Redis through the service's own pool
(connect and socket timeouts, `middleware.store.connection`), each poll iteration that fails on
Redis is followed by a back-off (doubling up to `MAX_BACKOFF_S`), and the worker logs when Redis goes
away and when it is back. A job that was running when Redis went away either finishes its writes
after the outage or, if it could not, is run again once arq's in-progress marker expires (jobs are
acknowledged; nothing is lost). A worker that cannot reach Redis at start-up keeps trying too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from arq.worker import Worker

from middleware.errors import StoreUnavailable
from middleware.store.guard import STORE_ERRORS, described

log = logging.getLogger("middleware.jobs")
REDIS_DOWN = (*STORE_ERRORS, StoreUnavailable)
MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0


class Backoff:
    """Doubling waits between `MIN_BACKOFF_S` and `MAX_BACKOFF_S`; `reset()` after a success."""

    def __init__(self) -> None:
        self.next_s = MIN_BACKOFF_S

    async def wait(self) -> None:
        await asyncio.sleep(self.next_s)
        self.next_s = min(MAX_BACKOFF_S, self.next_s * 2)

    def reset(self) -> None:
        self.next_s = MIN_BACKOFF_S


class ResilientWorker(Worker):
    """arq's worker whose poll loop survives Redis restarts and pauses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._down_since: float | None = None
        self._backoff = Backoff()

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except REDIS_DOWN as exc:
            if _cancelled():
                # Asked to stop while Redis was failing, and the cancellation came back as the fault
                # (a client's own read timeout can take its place): stop, rather than poll on forever.
                raise asyncio.CancelledError() from exc
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                log.error("Redis unreachable (%s): the worker waits and reconnects with back-off", described(exc))
            else:
                log.warning(
                    "Redis still unreachable after %.1f s (%s); next try in %.1f s",
                    now - self._down_since,
                    described(exc),
                    self._backoff.next_s,
                )
            await self._backoff.wait()
            return
        if self._down_since is not None:
            log.warning(
                "Redis reachable again after %.1f s: the worker resumed", time.monotonic() - self._down_since
            )
            self._down_since = None
            self._backoff.reset()


def _cancelled() -> bool:
    """Whether someone asked the running task to stop (a cancellation not yet taken back)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def supervise(make_worker: Callable[[], Worker]) -> None:
    """Run workers until one ends normally or is stopped by a signal; a Redis failure at start-up (or
    one that escapes the poll loop) closes that worker and starts a new one after a back-off."""
    backoff = Backoff()
    while True:
        worker = make_worker()
        try:
            await worker.async_run()
            return
        except asyncio.CancelledError:  # SIGINT/SIGTERM: arq cancelled its main task
            return
        except REDIS_DOWN as exc:
            log.error(
                "Redis unreachable (%s): starting the worker again in %.1f s", described(exc), backoff.next_s
            )
        finally:
            await close_quietly(worker)
        await backoff.wait()


async def close_quietly(worker: Worker) -> None:
    """Close a worker whose Redis may be gone: the close steps that need Redis may fail."""
    try:
        await asyncio.wait_for(worker.close(), timeout=30)
    except (*REDIS_DOWN, asyncio.CancelledError) as exc:
        log.warning("worker closed without Redis (%s)", described(exc))
        if worker._pool is not None:
            await worker._pool.aclose(close_connection_pool=True)
            worker._pool = None
