"""The hot path's lane to one Redis server: its commands pipelined on one connection.

Every proxied call reads Redis once before going upstream, and the write-behind writes once per turn
of the event loop after answers. Through redis-py's pool each such round trip takes a connection,
checks it, writes, reads each reply through its stream reader and gives the connection back: about 28
µs of CPU at c=16, where this lane takes about 7. Everything asked of the lane in one turn of the event
loop goes out in one write (the reads of the calls that arrived together and the writes of those
that ended share it), and the replies come back in order: Redis answers one connection's commands in
the order it got them, so each caller takes its own from the front. A command asked of an idle lane
(nothing in flight, nothing queued) goes out at once: a lone call (c=1) does not wait a turn of the
loop for company that is not coming, and under load the lane is rarely idle.

- A caller that stops waiting (its `asyncio.timeout`) leaves its replies to be read and dropped; the
  connection stays in step. If the oldest command has waited longer than `stall_s`, the connection is
  dropped and every waiting caller gets a ConnectionError (a stopped or unreachable server cannot pile
  up waiters), and the next command connects anew.
- Error replies come back in their command's place as redis-py's exceptions (`NoScriptError`, ...),
  as `pipelines.send` returns them.
- Plain TCP servers only (a URL's user, password and database included). `create_redis` attaches a
  lane to the hot path's client when it names one (`attach`); `pipelines.send` takes the lane of the
  client it is given (`lane_of`), else redis-py's: a Sentinel group, a Cluster, TLS or a unix socket
  keep redis-py's clients, as does every client the hot path does not use.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from hiredis import pack_command
from redis._parsers.base import BaseParser  # redis-py's own mapping of error replies to exceptions
from redis.exceptions import ConnectionError as RedisConnectionError

Command = tuple[str | int | float | bytes, ...]


class _Waiting:
    __slots__ = ("count", "future", "replies", "sent_at")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, sent_at: float) -> None:
        self.future = future
        self.count = count
        self.replies: list[Any] = []
        self.sent_at = sent_at


class _LaneProtocol(asyncio.Protocol):
    def __init__(self, lane: RedisLane) -> None:
        self.lane = lane
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.lane._waiting
        try:
            while (reply := self.reader.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):
                    reply = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
                head = waiting[0]
                head.replies.append(reply)
                if len(head.replies) == head.count:
                    waiting.popleft()
                    if not head.future.done():
                        head.future.set_result(head.replies)
        except (hiredis.ProtocolError, IndexError) as exc:  # out of step: nothing read can be trusted
            self.lane._drop(f"the store's replies are out of step: {exc!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lane._lost(self, exc)


class RedisLane:
    """One pipelined connection to a Redis server at `host`:`port` (see the module's docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        connect_timeout_s: float = 1.0,
        stall_s: float = 1.0,
    ) -> None:
        self.host = host
        self.port = port
        self._hello: list[Command] = []
        if password:
            self._hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._hello.append(("SELECT", db))
        self._connect_timeout_s = connect_timeout_s
        self._stall_s = stall_s
        self._protocol: _LaneProtocol | None = None
        self._connecting: asyncio.Task[_LaneProtocol] | None = None
        self._waiting: deque[_Waiting] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.connections_made = 0

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The replies to `commands`, in order; an error reply is returned in its place."""
        if not commands:  # nothing to send: a waiter for no replies would never be settled
            return []
        loop = asyncio.get_running_loop()
        protocol = self._protocol
        if protocol is None:
            protocol = await self._connect()
        elif self._waiting and loop.time() - self._waiting[0].sent_at > self._stall_s:
            self._drop("the store did not answer in time")
            protocol = await self._connect()
        future: asyncio.Future[list[Any]] = loop.create_future()
        packed = b"".join([pack_command(command) for command in commands])  # type: ignore[arg-type]
        idle = not self._waiting and not self._out
        self._waiting.append(_Waiting(future, len(commands), loop.time()))
        if idle and protocol.transport is not None:
            protocol.transport.write(packed)  # nothing to share a write with: no turn of the loop to wait
        else:
            self._out.append(packed)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None and out:
            protocol.transport.write(b"".join(out))

    async def _connect(self) -> _LaneProtocol:
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> _LaneProtocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(lambda: _LaneProtocol(self), self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(
                f"could not connect to the store at {self.host}:{self.port}: {exc!r}"
            ) from exc
        self._protocol = protocol
        self.connections_made += 1
        if self._hello:
            replies = await self.execute(self._hello)
            failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if failed is not None:
                self._drop(f"the store refused the connection: {failed}")
                raise failed
        return protocol

    def _drop(self, reason: str) -> None:
        """Give up on the connection: every waiting caller gets a ConnectionError."""
        protocol, self._protocol = self._protocol, None
        self._fail_waiting(RedisConnectionError(reason))
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    def _lost(self, protocol: _LaneProtocol, exc: Exception | None) -> None:
        if self._protocol is protocol:
            self._protocol = None
            self._fail_waiting(RedisConnectionError(f"the store closed the connection: {exc!r}"))

    def _fail_waiting(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, deque()
        self._out = []
        for entry in waiting:
            if not entry.future.done():
                entry.future.set_exception(error)

    def close(self) -> None:
        self._drop("the store connection was closed")


_LANES: weakref.WeakKeyDictionary[object, RedisLane] = weakref.WeakKeyDictionary()


def attach(client: object, lane: RedisLane) -> None:
    """Have `client`'s pipelines (`pipelines.send`) go through `lane`."""
    _LANES[client] = lane


def lane_of(client: object) -> RedisLane | None:
    return _LANES.get(client)
