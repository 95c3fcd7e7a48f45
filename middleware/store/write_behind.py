"""Writes that follow an answer and must not delay it, batched: one pipeline per turn of the event loop.

Once an answer is ready the proxy still has writes to make: give back the call's concurrency slot,
count its tokens against the day, store its feedback record, note who owns a stored response. None
of them changes the answer, so the answer does not wait for them. Each store part that has such
writes asks for a flush (`soon`); one background task then sends everything asked for since its last
pipeline in one round trip, so calls that end together share it. (Letting the next hot-path read
carry them instead was measured slower: it puts them on that call's critical path.)

A part folds its writes where it can (the tokens of many answers become one INCRBY, their slots one
ZREM). A part's plain commands must be safe to apply twice (a pipeline is sent again when Redis lost
its scripts); a counter goes through a script. A fault loses only these writes (a slot expires on its
own, a record is best effort): it is logged and counted, and never reaches an answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis

from middleware.store.guard import STORE_ERRORS, described
from middleware.store.pipelines import Command, ScriptPipelines

log = logging.getLogger("middleware.store")
T = TypeVar("T")

# A part hands over the commands of the writes it has waiting (and forgets them).
Part = Callable[[], list[Command]]


class WriteBehind:
    def __init__(
        self, redis: Redis, on_failure: Callable[[int], None] | None = None, *, timeout_s: float = 5.0
    ) -> None:
        """`on_failure(commands)`: told how many commands a fault lost; `timeout_s`: how long a flush
        may take (the client may have no socket timeout of its own)."""
        self._pipelines = ScriptPipelines(redis)
        self._on_failure = on_failure
        self._timeout_s = timeout_s
        self._parts: dict[Part, None] = {}  # in the order asked, each once
        self._task: asyncio.Task[None] | None = None

    def script(self, script: str) -> str:
        """A script the parts call by EVALSHA (loaded with the first flush, and again after a Redis
        restart); returns its SHA1."""
        return self._pipelines.add(script)

    def soon(self, part: Part) -> None:
        """Have `part`'s writes sent in the next turn of the event loop."""
        self._parts[part] = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())

    @property
    def busy(self) -> bool:
        """Whether writes asked for are not all written yet."""
        return self._task is not None and not self._task.done()

    async def drain(self) -> None:
        """Wait until everything asked for is written (a lookup that missed it, shutdown, tests)."""
        while self._task is not None and not self._task.done():
            await asyncio.gather(self._task, return_exceptions=True)

    async def read_through(self, read: Callable[[], Awaitable[T | None]]) -> T | None:
        """`read()`; when it finds nothing while this process still has writes on their way, once more
        after they are written: a lookup of what a write behind an answer stores (a feedback record's
        owner, a stored response's) finds it even when asked before the flush."""
        found = await read()
        if found is None and self.busy:
            await self.drain()
            found = await read()
        return found

    async def _flush(self) -> None:
        while self._parts:
            parts, self._parts = self._parts, {}
            commands: list[Command] = []
            for part in parts:
                try:
                    commands.extend(part())
                except Exception:  # one part's bug never costs the others their writes
                    log.exception("a write-behind part failed to build its commands")
            if not commands:  # every part had nothing (or failed to build): no round trip
                continue
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._pipelines.run(commands)
            except STORE_ERRORS as exc:
                log.warning("%d write(s) after answers not stored: %s", len(commands), described(exc))
                if self._on_failure is not None:
                    self._on_failure(len(commands))
