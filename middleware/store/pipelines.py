"""Pipelines that call scripts by EVALSHA, and carry writes that ride along with them.

EVALSHA goes straight into the pipeline (redis-py's pipelined Script would check SCRIPT EXISTS first,
one more round trip on every call); the first pipeline of a process loads the scripts in the same
round trip, and when Redis lacks one later (a restart, a flush) the scripts are loaded and the
pipeline sent once more.

A read on the hot path can take writes that wait behind earlier answers (`store/write_behind.py`)
with it: they go first in its pipeline (a slot given back counts before this call's own admission),
their replies are not the reader's, and their failure is only theirs: a reply of theirs that is an
error is reported to the write-behind, never raised to the reader.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from middleware.store.guard import resolved

# A command as redis-py sends it: its name and arguments.
Command = tuple[str | int | float | bytes, ...]


class Riders(Protocol):
    """Writes that may ride with a read (`WriteBehind`)."""

    @property
    def scripts(self) -> Sequence[str]: ...

    def take(self) -> list[Command]: ...

    def lost(self, count: int, error: BaseException) -> None: ...


def sha1(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class ScriptPipelines:
    def __init__(self, redis: Redis, *scripts: str, riders: Riders | None = None) -> None:
        """`riders`: where the writes that ride with these pipelines come from (None: no riders)."""
        self._redis = redis
        self._scripts = scripts
        self._riders = riders
        self._loaded: tuple[str, ...] = ()  # the scripts this process loaded (and Redis still has)

    def add(self, script: str) -> str:
        """One more script these pipelines may call; returns its SHA1 for EVALSHA."""
        if script not in self._scripts:
            self._scripts = (*self._scripts, script)
        return sha1(script)

    def _all_scripts(self) -> tuple[str, ...]:
        if self._riders is None:
            return self._scripts
        return (*self._scripts, *(s for s in self._riders.scripts if s not in self._scripts))

    async def run(self, build: Callable[[Pipeline], None]) -> list[Any]:
        """The replies to what `build` adds (the riders' replies left out)."""
        riding = self._riders.take() if self._riders is not None else []
        try:
            return await self._run(build, riding)
        except BaseException as exc:  # a failed or cancelled read loses the writes that rode with it
            if riding and self._riders is not None:
                self._riders.lost(len(riding), exc)
            raise

    async def _run(self, build: Callable[[Pipeline], None], riding: list[Command]) -> list[Any]:
        for attempt in (1, 2):
            scripts = self._all_scripts()
            preload = scripts if scripts != self._loaded else ()
            if preload and isinstance(self._redis, RedisCluster):
                # a cluster: SCRIPT LOAD goes to every master itself (its pipeline refuses the command)
                for script in preload:
                    await resolved(self._redis.script_load(script))
                self._loaded, preload = scripts, ()
            pipe = self._redis.pipeline(transaction=False)
            for script in preload:
                pipe.script_load(script)
            for command in riding:
                pipe.execute_command(*command)
            build(pipe)
            try:
                result: list[Any] = await pipe.execute(raise_on_error=False)
            except NoScriptError:  # a cluster pipeline raises it whatever it was asked
                result = [NoScriptError()]
            missing = next((r for r in result if isinstance(r, NoScriptError)), None)
            if missing is not None:
                if attempt == 2:
                    raise missing
                self._loaded = ()  # Redis lost them (a restart, a flush): load them all again
                continue
            self._loaded = scripts
            written, replies = (
                result[len(preload) : len(preload) + len(riding)],
                result[len(preload) + len(riding) :],
            )
            failed = [reply for reply in written if isinstance(reply, Exception)]
            if failed and self._riders is not None:
                self._riders.lost(len(failed), failed[0])
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies
        raise AssertionError("unreachable")  # pragma: no cover
