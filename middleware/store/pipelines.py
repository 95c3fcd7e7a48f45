"""Pipelines that call scripts by EVALSHA, sent in one round trip.

EVALSHA goes straight into the pipeline (redis-py's pipelined Script would check SCRIPT EXISTS first,
one more round trip on every call); the first pipeline of a process loads the scripts in the same
round trip, and when Redis lacks one later (a restart, a flush) the scripts are loaded and the
pipeline sent once more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from hiredis import pack_command
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from middleware.store.guard import resolved
from middleware.store.lane import Command as Command  # a command as redis-py sends it: its name and arguments
from middleware.store.lane import lane_of


def sha1(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class ScriptPipelines:
    def __init__(self, redis: Redis, *scripts: str) -> None:
        self._redis = redis
        self._scripts = scripts
        self._loaded: tuple[str, ...] = ()  # the scripts this process loaded (and Redis still has)

    def add(self, script: str) -> str:
        """One more script these pipelines may call; returns its SHA1 for EVALSHA."""
        if script not in self._scripts:
            self._scripts = (*self._scripts, script)
        return sha1(script)

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        """The replies to `commands` (HGETALL: a flat list, or a dict on a cluster: `as_dict` reads
        either); an error reply is raised."""
        for attempt in (1, 2):
            scripts = self._scripts
            preload = scripts if scripts != self._loaded else ()
            if preload and isinstance(self._redis, RedisCluster):
                # a cluster: SCRIPT LOAD goes to every master itself (its pipeline refuses the command)
                for script in preload:
                    await resolved(self._redis.script_load(script))
                self._loaded, preload = scripts, ()
            loads: list[Command] = [("SCRIPT", "LOAD", script) for script in preload]
            result = await send(self._redis, [*loads, *commands])
            missing = next((r for r in result if isinstance(r, NoScriptError)), None)
            if missing is not None:
                if attempt == 2:
                    raise missing
                self._loaded = ()  # Redis lost them (a restart, a flush): load them all again
                continue
            self._loaded = scripts
            replies = result[len(loads) :]
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies
        raise AssertionError("unreachable")  # pragma: no cover


async def send(redis: Redis, commands: Sequence[Command]) -> list[Any]:
    """Send `commands` in one round trip; an error reply is returned in its place, not raised.

    On one server (or a Sentinel group's master) they go out on one pooled connection as one write,
    packed by hiredis, and the replies are read as Redis sent them: redis-py's pipeline object, its
    packing in Python, its reply callbacks, and its checks and retries around every command cost a
    fifth of a hot-path call's CPU. A Cluster gets
    redis-py's cluster pipeline, which routes each command to its slot's node."""
    lane = lane_of(redis)
    if lane is not None:  # the hot path's client: pipelined with every other call's (store/lane.py)
        return await lane.execute(commands)
    if isinstance(redis, RedisCluster):
        pipe = redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        try:
            return list(await pipe.execute(raise_on_error=False))
        except NoScriptError as missing:  # the cluster pipeline raises it whatever it was asked
            return [missing]
    pool = redis.connection_pool
    connection = await pool.get_connection()
    try:
        # hiredis packs in C what redis-py's asyncio connection packs in Python, argument by argument
        packed = b"".join(pack_command(command) for command in commands)  # type: ignore[arg-type]  # its stub types a 1-tuple
        await connection.send_packed_command(packed, check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as error:  # an error reply: read whole, the connection stays in step
                replies.append(error)
        return replies
    except BaseException:
        await connection.disconnect(nowait=True)  # replies may be left unread: never reuse it
        raise
    finally:
        await pool.release(connection)


def as_dict(reply: Any) -> dict[Any, Any]:
    """A hash as read: HGETALL's flat [field, value, ...] reply, a dict already, or None."""
    if isinstance(reply, dict):
        return reply
    if not reply:
        return {}
    pairs = iter(reply)
    return dict(zip(pairs, pairs, strict=True))
