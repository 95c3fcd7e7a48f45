"""Writes and admin reads fail closed: a Redis fault becomes a clear 503, never a silent loss."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

from redis.exceptions import RedisError

from middleware.errors import StoreUnavailable

log = logging.getLogger("middleware.store")
T = TypeVar("T")

STORE_ERRORS = (RedisError, OSError, TimeoutError)


async def fail_closed(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except STORE_ERRORS as exc:
        log.warning("store unavailable: %s", type(exc).__name__)
        raise StoreUnavailable("the store (Redis) is unavailable; nothing was changed") from exc
