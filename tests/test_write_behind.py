"""Writes behind answers (store/write_behind.py): folded, written once, never failing an answer."""

from __future__ import annotations

import time

import orjson
from redis.asyncio import Redis

from middleware.store import keys
from middleware.store.feedback import FeedbackStore
from middleware.store.ratelimits import RateLimitStore
from middleware.store.write_behind import WriteBehind
from tests.support.redis_server import RedisServer


async def test_calls_that_end_together_share_one_settle_per_tenant(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    store = RateLimitStore(client, WriteBehind(client))
    tenants = [f"wb-a-{time.monotonic_ns()}", f"wb-b-{time.monotonic_ns()}"]
    day = "20261126"
    for tenant in tenants:
        await client.zadd(keys.in_flight(tenant), {f"lease-{i}": 2_000_000_000_000 for i in range(10)})
    for i in range(10):
        for tenant in tenants:
            store.settle_later(tenant, day, 7 + i, f"lease-{i}")
    # everything asked for in this turn goes in one flush: one SETTLE per tenant and day
    assert [len(command) for command in store._settle_commands()] == [7 + 10] * 2
    for i in range(10):
        for tenant in tenants:
            store.settle_later(tenant, day, 7 + i, f"lease-{i}")
    await store._write_behind.drain()
    for tenant in tenants:
        assert int(await client.get(keys.tokens_day(tenant, day))) == sum(7 + i for i in range(10))
        assert 0 < await client.ttl(keys.tokens_day(tenant, day)) <= 2 * 86400
        assert await client.zcard(keys.in_flight(tenant)) == 0
    await client.aclose()


async def test_a_redis_that_lost_its_scripts_counts_tokens_once(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    behind = WriteBehind(client)
    store = RateLimitStore(client, behind)
    feedback = FeedbackStore(client, ttl_s=600, write_behind=behind)
    tenant, day = f"wb-flush-{time.monotonic_ns()}", "20261126"
    store.settle_later(tenant, day, 5, None)
    await behind.drain()
    await client.script_flush()  # as after a restart: the next flush meets NOSCRIPT and is sent again
    store.settle_later(tenant, day, 5, None)
    record = orjson.dumps({"arm": "inject"})
    feedback.write_later(lambda: [(tenant, "u", "pmr_flushed", record)])
    await behind.drain()
    assert int(await client.get(keys.tokens_day(tenant, day))) == 10
    assert await client.hget(keys.feedback(tenant, "u", "pmr_flushed"), "record") == record
    assert await client.get(keys.feedback_owner("pmr_flushed")) == f"{tenant}\nu".encode()
    await client.aclose()


async def test_a_flush_to_a_dead_redis_is_counted_not_raised(fresh_redis: RedisServer) -> None:
    client = Redis.from_url(fresh_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    lost: list[int] = []
    behind = WriteBehind(client, on_failure=lost.append)
    store = RateLimitStore(client, behind)
    fresh_redis.stop()
    store.settle_later("t", "20261126", 3, "lease")
    store.settle_later("t2", "20261126", 4, None)
    await behind.drain()  # returns: the fault stays in the write-behind
    assert lost == [2]
    await client.aclose()


async def test_a_response_owner_recorded_behind_is_found_at_once(redis_url: str) -> None:
    from middleware.store.response_owners import ResponseOwner, ResponseOwners

    client = Redis.from_url(redis_url)
    owners = ResponseOwners(client, ttl_s=60, write_behind=WriteBehind(client))
    response_id = f"resp_behind_{time.monotonic_ns()}"
    owners.record_later(response_id, ResponseOwner("tenant-a", True, 12))
    # asked before the flush ran: the read waits for this process's own writes on their way
    assert await owners.owner(response_id) == ResponseOwner("tenant-a", True, 12)
    assert 0 < await client.ttl(keys.response_owner(response_id)) <= 60
    assert await owners.owner("resp_never_made") is None
    await client.aclose()


async def test_a_feedback_owner_written_behind_is_found_at_once(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    behind = WriteBehind(client)
    feedback = FeedbackStore(client, ttl_s=600, write_behind=behind)
    response_id = f"pmr_behind_{time.monotonic_ns()}"
    feedback.write_later(lambda: [("tenant-a", "alice", response_id, orjson.dumps({"arm": "inject"}))])
    assert behind.busy  # asked before the flush ran: the lookup waits for the record on its way
    assert await feedback.owner(response_id) == ("tenant-a", "alice")
    assert await feedback.owner("pmr_never_made") is None
    await client.aclose()


async def test_a_read_through_reads_again_only_after_writes_it_waited_for(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    behind = WriteBehind(client)
    key = f"wb-read-{time.monotonic_ns()}"
    reads: list[bytes | None] = []

    async def read() -> bytes | None:
        reads.append(await client.get(key))
        return reads[-1]

    assert await behind.read_through(read) is None and reads == [None]  # nothing on its way: one read
    behind.soon(lambda: [("SET", key, "written")])
    assert await behind.read_through(read) == b"written" and reads == [None, None, b"written"]
    assert await behind.read_through(read) == b"written" and len(reads) == 4  # found: no second read
    await client.aclose()


async def test_one_failing_write_neither_stops_the_others_nor_goes_unnoticed(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    lost: list[int] = []
    behind = WriteBehind(client, on_failure=lost.append)
    limits = RateLimitStore(client, behind)
    day, good, broken = "20261126", f"wb-good-{time.monotonic_ns()}", f"wb-broken-{time.monotonic_ns()}"
    await client.hset(keys.tokens_day(broken, day), "x", "1")  # the day's key holds a hash: INCRBY fails
    limits.settle_later(broken, day, 5, None)
    limits.settle_later(good, day, 7, None)
    await behind.drain()
    assert int(await client.get(keys.tokens_day(good, day))) == 7
    assert lost == [2]  # the flush's commands, counted as not (all) stored
    await client.aclose()
