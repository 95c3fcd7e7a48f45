"""Shared fixtures: a private redis-server and the fake OpenAI-compatible upstream.

App/proxy fixtures live in their own modules (e.g. tests/support/proxy.py) and are added here
through ``pytest_plugins`` or imported by the tests that need them.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_server import RedisServer

pytest_plugins = ["tests.support.proxy", "tests.jobs_support", "tests.support.redis_topologies"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session (use ``redis_url`` for a flushed database)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared test Redis after FLUSHALL."""
    if not redis_server.running:  # a test killed it: bring it back
        redis_server.restart()
    if redis_server.paused:
        redis_server.resume()
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start private RedisServers (``redis_factory(appendonly=True)``); all stopped after the test."""
    servers: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def fresh_redis(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    """A private redis-server for this test only (safe to kill, pause or restart)."""
    return redis_factory()


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake_upstream(fake_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    """The session's fake upstream, reset (no requests, script or responder) for this test."""
    fake_upstream_server.reset()
    try:
        yield fake_upstream_server
    finally:
        fake_upstream_server.reset()


@pytest.fixture
def isolated_fake_upstream() -> Iterator[FakeUpstream]:
    """A fake upstream of this test's own (own port): nothing a previous test left in flight reaches it."""
    with FakeUpstream() as fake:
        yield fake
