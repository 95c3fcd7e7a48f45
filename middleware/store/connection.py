"""The Redis connection pool: explicit timeouts and a bounded pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import BlockingConnectionPool, Redis

from middleware.config import Settings
from middleware.store.guard import STORE_ERRORS


def create_redis(settings: Settings) -> Redis:
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_connect_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
        retry_on_timeout=False,
    )
    return Redis(connection_pool=pool)


async def reachable(redis: Redis, timeout_s: float = 1.0) -> bool:
    """Does Redis answer a PING within `timeout_s`?"""
    try:
        await asyncio.wait_for(redis.ping(), timeout=timeout_s)
    except (TimeoutError, *STORE_ERRORS):
        return False
    return True


@asynccontextmanager
async def redis_client(settings: Settings) -> AsyncIterator[Redis]:
    """A client for one command-line run, closed afterwards."""
    redis = create_redis(settings)
    try:
        yield redis
    finally:
        await redis.aclose()
