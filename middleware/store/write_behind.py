"""Writes that follow an answer and must not delay it, batched: one pipeline per turn of the event loop.

Once an answer is ready the proxy still has writes to make: give back the call's concurrency slot,
count its tokens against the day, store its feedback record. None of them changes the answer, so the
answer does not wait for them. Each store part that has such writes asks to be flushed (`soon`); one
background task then sends everything asked for since its last pipeline in one round trip, so calls
that finish together share it (and a part can fold its writes: the tokens of many answers become one
INCRBY, their slots one ZREM). A fault loses only these writes (a slot expires on its own, a record
is best effort) and is logged and counted; it never reaches an answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from middleware.store.guard import STORE_ERRORS
from middleware.store.segments import ScriptPipelines

log = logging.getLogger("middleware.store")

# A command as redis-py sends it: its name and arguments.
Command = tuple[str | int | float | bytes, ...]
# A part hands over the commands of the writes it has waiting (and forgets them).
Part = Callable[[], list[Command]]


class WriteBehind:
    def __init__(self, redis: Redis, on_failure: Callable[[int], None] | None = None) -> None:
        """`on_failure(commands)`: told how many commands a failed flush lost."""
        self._pipelines = ScriptPipelines(redis)
        self._on_failure = on_failure
        self._parts: dict[Part, None] = {}  # in the order asked, each once
        self._task: asyncio.Task[None] | None = None

    def script(self, script: str) -> str:
        """A script the parts call by EVALSHA (loaded with the first flush, and again after a Redis
        restart, when the whole pipeline is sent once more: so a part's plain commands must be safe to
        apply twice, and a counter goes through a script); returns its SHA1."""
        return self._pipelines.add(script)

    def soon(self, part: Part) -> None:
        """Have `part` add its commands to the next flush (once, however often it asks before it)."""
        self._parts[part] = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._parts:
            parts, self._parts = self._parts, {}
            commands: list[Command] = []
            for part in parts:
                try:
                    commands.extend(part())
                except Exception:  # one part's bug never costs the others their writes
                    log.exception("a write-behind part failed to build its commands")

            try:
                await self._pipelines.run(partial(_send, commands))
            except STORE_ERRORS as exc:
                log.warning("%d write(s) after answers not stored: %s", len(commands), type(exc).__name__)
                if self._on_failure is not None:
                    self._on_failure(len(commands))

    @property
    def busy(self) -> bool:
        """Whether writes asked for are not all written yet."""
        return self._task is not None and not self._task.done()

    async def drain(self) -> None:
        """Wait until everything asked for is written (shutdown, tests)."""
        while self._task is not None and not self._task.done():
            await asyncio.gather(self._task, return_exceptions=True)


def _send(commands: list[Command], pipe: Pipeline) -> None:
    for command in commands:
        pipe.execute_command(*command)
