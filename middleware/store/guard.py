"""Writes and admin reads fail closed: a Redis fault becomes a clear 503, never a silent loss. The
chat path's persona reads fail open instead, behind a breaker (`ReadBreaker`)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

from redis.exceptions import RedisClusterException, RedisError

from middleware.errors import StoreUnavailable

log = logging.getLogger("middleware.store")
T = TypeVar("T")

# RedisClusterException: a cluster none of whose nodes answers (or whose slots are not all served).
STORE_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
# A command that timed out may still have been applied: say so, and say what makes a retry safe.
UNAVAILABLE = (
    "the store (Redis) did not answer in time: a write may or may not have been stored; retrying the "
    "same request is safe (with the same Idempotency-Key, or the same comparison, nothing is stored twice)"
)


@overload
async def fail_closed(awaitable: Awaitable[T]) -> T: ...
@overload
async def fail_closed(awaitable: Awaitable[T] | T) -> T: ...
async def fail_closed(awaitable: Any) -> Any:
    """Await a Redis command (redis-py types its async commands as `Awaitable[T] | T`)."""
    try:
        if inspect.isawaitable(awaitable):
            return await awaitable
        return awaitable
    except STORE_ERRORS as exc:
        raise unavailable(exc) from exc


def described(exc: BaseException, limit: int = 200) -> str:
    """A store fault for an operator's log: its type and what it says (one line, at most `limit`
    characters; the type alone when it says nothing, as a timeout often does)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:limit] if text else type(exc).__name__


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The 503 for a store error (logged)."""
    log.warning("store unavailable: %s", described(exc))
    return StoreUnavailable(UNAVAILABLE)


async def resolved(value: Awaitable[T] | T) -> T:
    """Await a redis-py command whose type is `Awaitable[T] | T`, leaving its errors alone."""
    if inspect.isawaitable(value):
        return await value
    return value


class PersonaReadFailed(Exception):
    """The persona could not be read in time; the caller goes on without one (fail open).

    `skipped` is true when the read was not even tried because the store failed moments ago.
    """

    def __init__(self, message: str, *, skipped: bool = False) -> None:
        super().__init__(message)
        self.skipped = skipped


class ReadBreaker:
    """The guard of a read the chat path makes before going upstream: bounded by `timeout_s`, and
    after a failure the reads are skipped for `open_s`, so an outage costs each call nothing rather
    than a timeout. A failed or skipped read raises PersonaReadFailed."""

    def __init__(self, timeout_s: float, open_s: float) -> None:
        self.timeout_s = timeout_s
        self._open_s = open_s
        self._open_until = 0.0

    def check(self) -> None:
        """Raise PersonaReadFailed (skipped) while the breaker is open."""
        if time.monotonic() < self._open_until:
            raise PersonaReadFailed("persona store recently failed; read skipped", skipped=True)

    async def read(self, read: Callable[[], Awaitable[T]]) -> T:
        """`read()`, bounded in time; a store fault opens the breaker and raises PersonaReadFailed."""
        try:
            async with asyncio.timeout(self.timeout_s):  # no task of its own, unlike wait_for
                return await read()
        except STORE_ERRORS as exc:
            self._open_until = time.monotonic() + self._open_s
            raise PersonaReadFailed(described(exc)) from exc
