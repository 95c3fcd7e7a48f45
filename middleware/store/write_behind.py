"""Writes that follow an answer and must not delay it, batched, and riding with the next read.

Once an answer is ready the proxy still has writes to make: give back the call's concurrency slot,
count its tokens against the day, store its feedback record, note who owns a stored response. None
of them changes the answer, so the answer does not wait for them. Each store part that has such
writes asks for them to be sent (`later`, or `soon` when another call may look for them at once):

- the next hot-path read takes whatever waits (`take`, through `ScriptPipelines`): the writes go first
  in its pipeline, so under load they cost no round trip of their own and a slot given back counts
  before the next admission;
- what no read took within `linger_s` (1 ms: a quiet moment), or what asked for `soon`, goes in a
  pipeline of its own, sent by one background task: calls that end together share it.

A part folds its writes where it can (the tokens of many answers become one INCRBY, their slots one
ZREM). A part's plain commands must be safe to apply twice (a pipeline is sent again when Redis lost
its scripts); a counter goes through a script. A fault loses only these writes (a slot expires on its
own, a record is best effort): it is logged and counted, and never reaches an answer or a read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from redis.asyncio import Redis

from middleware.store.guard import STORE_ERRORS
from middleware.store.pipelines import Command, ScriptPipelines, sha1

log = logging.getLogger("middleware.store")

# A part hands over the commands of the writes it has waiting (and forgets them).
Part = Callable[[], list[Command]]
LINGER_S = 0.001
RIDE_MAX = 64  # commands a read takes with it at most (the rest go on their own)


class WriteBehind:
    def __init__(
        self,
        redis: Redis,
        on_failure: Callable[[int], None] | None = None,
        *,
        linger_s: float = LINGER_S,
        ride_max: int = RIDE_MAX,
        timeout_s: float = 5.0,
    ) -> None:
        """`on_failure(commands)`: told how many commands a fault lost; `timeout_s`: how long a flush
        of its own may take (the client may have no socket timeout of its own)."""
        self._timeout_s = timeout_s
        self._scripts: tuple[str, ...] = ()
        self._pipelines = ScriptPipelines(redis)
        self._on_failure = on_failure
        self._linger_s = linger_s
        self._ride_max = ride_max
        self._parts: dict[Part, None] = {}  # in the order asked, each once
        self._leftover: list[Command] = []  # taken from the parts, not sent yet
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def script(self, script: str) -> str:
        """A script the parts call by EVALSHA (loaded with the first pipeline that needs it, and again
        after a Redis restart); returns its SHA1."""
        if script not in self._scripts:
            self._scripts = (*self._scripts, script)
            self._pipelines.add(script)
        return sha1(script)

    @property
    def scripts(self) -> Sequence[str]:
        return self._scripts

    def later(self, part: Part) -> None:
        """Have `part`'s writes sent with the next read, or on their own after `linger_s`."""
        self._parts[part] = None
        if self._timer is None and (self._task is None or self._task.done()):  # a running flush takes it
            self._timer = asyncio.get_running_loop().call_later(self._linger_s, self._flush_now)

    def soon(self, part: Part) -> None:
        """Have `part`'s writes sent in the next turn of the event loop, read or not."""
        self._parts[part] = None
        self._flush_now()

    def take(self) -> list[Command]:
        """What waits, for a read to send first in its pipeline (at most `ride_max` commands)."""
        if not self._parts and not self._leftover:
            return []
        commands = self._collect()
        self._leftover = commands[self._ride_max :]
        return commands[: self._ride_max]

    def lost(self, count: int, error: BaseException) -> None:
        """`count` commands that rode with a read were not stored."""
        log.warning("%d write(s) after answers not stored: %s", count, type(error).__name__)
        if self._on_failure is not None:
            self._on_failure(count)

    @property
    def busy(self) -> bool:
        """Whether writes asked for are not all written yet."""
        return bool(self._parts or self._leftover) or (self._task is not None and not self._task.done())

    async def drain(self) -> None:
        """Send what waits now and wait until it is written (a read that missed it, shutdown, tests)."""
        self._flush_now()
        while self._task is not None and not self._task.done():
            await asyncio.gather(self._task, return_exceptions=True)

    def _flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if (self._parts or self._leftover) and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._flush())

    def _collect(self) -> list[Command]:
        parts, self._parts = self._parts, {}
        commands, self._leftover = self._leftover, []
        for part in parts:
            try:
                commands.extend(part())
            except Exception:  # one part's bug never costs the others their writes
                log.exception("a write-behind part failed to build its commands")
        return commands

    async def _flush(self) -> None:
        while self._parts or self._leftover:
            commands = self._collect()
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._pipelines.run(commands)
            except STORE_ERRORS as exc:
                self.lost(len(commands), exc)
