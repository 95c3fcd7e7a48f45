"""The hot path's lane to Redis (middleware/store/lane.py) against real redis-server processes: its
own servers where a test stops, restarts or locks one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from middleware.config import Settings
from middleware.store.connection import close_redis, create_redis
from middleware.store.lane import RedisLane, lane_of
from middleware.store.pipelines import send
from tests.support.redis_server import RedisServer


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def lane_to(server: RedisServer, stall_s: float = 1.0) -> RedisLane:
    return RedisLane(server.host, server.port, stall_s=stall_s)


def lane_for(redis_url: str) -> RedisLane:
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    return RedisLane(host, int(port))


def watch_writes(lane: RedisLane) -> list[bytes]:
    """What the lane writes to its connection from now on, each write as it went out."""
    writes: list[bytes] = []
    protocol = lane._protocol
    assert protocol is not None and protocol.transport is not None
    real_write = protocol.transport.write

    def counting(data: bytes) -> None:
        writes.append(data)
        real_write(data)

    protocol.transport.write = counting  # type: ignore[method-assign,assignment]
    return writes


async def test_the_calls_of_one_turn_go_in_one_write_and_each_gets_its_own_replies(redis_url: str) -> None:
    """The first call on an idle lane goes out at once; the 19 that came in the same turn share
    one write."""
    lane = lane_for(redis_url)
    await lane.execute([("SET", "lane:warm", "1")])  # connected
    writes = watch_writes(lane)
    replies = await asyncio.gather(
        *(
            lane.execute([("SET", f"lane:{i}", str(i)), ("GET", f"lane:{i}"), ("INCR", "lane:n")])
            for i in range(20)
        )
    )
    assert len(writes) == 2
    assert writes[0].count(b"lane:0") == 2 and b"lane:1\r" not in writes[0]
    assert all(f"lane:{i}\r".encode() in writes[1] for i in range(1, 20))
    assert [r[:2] for r in replies] == [[b"OK", str(i).encode()] for i in range(20)]
    assert sorted(r[2] for r in replies) == list(range(1, 21))
    assert lane.connections_made == 1
    lane.close()


async def test_a_call_on_an_idle_lane_is_written_before_the_loop_turns(redis_url: str) -> None:
    lane = lane_for(redis_url)
    await lane.execute([("SET", "lane:warm", "1")])  # connected, and idle again
    writes = watch_writes(lane)
    call = lane.execute([("GET", "lane:warm")])
    reply = call.send(None)  # the call runs up to its wait for the reply: no turn of the loop yet
    assert writes == [b"*2\r\n$3\r\nGET\r\n$9\r\nlane:warm\r\n"]
    await asyncio.wait([reply])
    with pytest.raises(StopIteration) as done:
        call.send(None)
    assert done.value.value == [b"1"]
    lane.close()


async def test_error_replies_come_back_in_place_as_redis_py_exceptions(redis_url: str) -> None:
    lane = lane_for(redis_url)
    await lane.execute([("SET", "lane:s", "text")])
    replies = await lane.execute([("EVALSHA", "0" * 40, 0), ("INCR", "lane:s"), ("GET", "lane:s")])
    assert isinstance(replies[0], NoScriptError)
    assert isinstance(replies[1], ResponseError) and "not an integer" in str(replies[1])
    assert replies[2] == b"text"
    lane.close()


async def test_a_caller_that_stops_waiting_leaves_the_connection_in_step(own_redis: RedisServer) -> None:
    lane = lane_to(own_redis)
    blocker = Redis(host=own_redis.host, port=own_redis.port)
    await lane.execute([("SET", "k", "v")])
    await blocker.client_pause(300, all=True)  # nothing answered for 0.3 s
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await lane.execute([("GET", "k"), ("SET", "k", "w")])
    # the abandoned call's replies were read and dropped: this one gets its own
    assert await lane.execute([("GET", "k"), ("ECHO", "mine")]) == [b"w", b"mine"]
    assert lane.connections_made == 1
    await blocker.aclose()
    lane.close()


async def test_a_stopped_server_fails_the_waiting_calls_and_the_lane_reconnects(
    own_redis: RedisServer,
) -> None:
    lane = lane_to(own_redis, stall_s=0.2)
    await lane.execute([("SET", "k", "v")])
    with own_redis.while_paused():  # SIGSTOP: the connection stays open, nothing answers
        stuck = asyncio.create_task(lane.execute([("GET", "k")]))
        done, _ = await asyncio.wait({stuck}, timeout=0.3)  # outlasts stall_s
        assert not done
        with pytest.raises(TimeoutError):  # the next call finds the oldest stalled, drops, reconnects
            async with asyncio.timeout(0.5):
                await lane.execute([("GET", "k")])
        with pytest.raises(RedisConnectionError):
            await stuck
    assert await lane.execute([("GET", "k")]) == [b"v"]
    assert lane.connections_made >= 2  # dropped and made anew (maybe once more, racing the resume)
    lane.close()


async def test_a_restarted_server_is_reached_again(own_redis: RedisServer) -> None:
    lane = lane_to(own_redis)
    await lane.execute([("SET", "k", "v")])
    own_redis.kill()
    with pytest.raises(RedisConnectionError):
        await lane.execute([("GET", "k")])
    own_redis.restart()
    assert await lane.execute([("ECHO", "back")]) == [b"back"]
    lane.close()


async def test_a_password_and_a_database_from_the_url_are_used(own_redis: RedisServer) -> None:
    admin = Redis(host=own_redis.host, port=own_redis.port)
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    settings = Settings(redis_url=f"redis://:s3cret@{own_redis.host}:{own_redis.port}/3")
    hot = create_redis(settings, caller_timeouts=True)
    lane = lane_of(hot)
    assert lane is not None
    set_reply, info = await send(hot, [("SET", "db3", "x"), ("CLIENT", "INFO")])
    assert set_reply == b"OK" and b" db=3 " in info
    assert lane.connections_made == 1
    await close_redis(hot)
    wrong = RedisLane(own_redis.host, own_redis.port, password="nope")
    with pytest.raises(AuthenticationError):
        await wrong.execute([("PING",)])
    wrong.close()


def test_only_plain_tcp_hot_clients_get_a_lane(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url)
    assert lane_of(create_redis(settings, caller_timeouts=True)) is not None
    assert lane_of(create_redis(settings)) is None  # the other clients keep redis-py's pool
    tls = Settings(redis_url=redis_url.replace("redis://", "rediss://"))
    assert lane_of(create_redis(tls, caller_timeouts=True)) is None


async def test_an_empty_batch_answers_at_once_and_leaves_the_lane_in_step(redis_url: str) -> None:
    lane = lane_for(redis_url)
    assert await asyncio.wait_for(lane.execute([]), 1) == []
    assert await asyncio.wait_for(lane.execute([("ECHO", "next")]), 1) == [b"next"]
    lane.close()
