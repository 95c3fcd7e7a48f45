"""The lean upstream client (middleware/upstream_http.py) against real sockets: small HTTP servers in
the test's own event loop that answer, stall, close or misbehave as each test needs."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from middleware.config import Settings
from middleware.upstream import UpstreamRouter
from middleware.upstream_http import HIGH_WATER, LeanClient, UpstreamConnectionError, UpstreamReadTimeout
from tests.support.redis_topologies import make_certificates
from tests.support.waiting import await_until

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


@dataclass
class Server:
    port: int = 0
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


async def read_request(reader: asyncio.StreamReader, server: Server) -> bytes | None:
    """One request's head and body (by Content-Length); None when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    server.requests.append(head + body)
    return body


def answer(body: bytes, *, status: int = 200, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s" % (
        status,
        extra,
        len(body),
        body,
    )


@asynccontextmanager
async def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        server.open_now += 1
        server.most_open = max(server.most_open, server.open_now)
        try:
            await handler(reader, writer, server)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test ended
        finally:
            server.open_now -= 1
            writer.close()
            server.closed.set()

    listening = await asyncio.start_server(connected, "127.0.0.1", 0, ssl=tls)
    server.port = listening.sockets[0].getsockname()[1]
    async with listening:
        yield server


def client(server: Server, **overrides: float) -> LeanClient:
    settings = {"limit": 8, "connect_timeout_s": 2.0, "read_timeout_s": 5.0, "total_timeout_s": 10.0}
    settings.update(overrides)
    return LeanClient(
        f"http://127.0.0.1:{server.port}/v1",
        {"Content-Type": "application/json", "Authorization": "Bearer sk-up"},
        limit=int(settings["limit"]),
        connect_timeout_s=settings["connect_timeout_s"],
        read_timeout_s=settings["read_timeout_s"],
        total_timeout_s=settings["total_timeout_s"],
    )


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
    while (body := await read_request(reader, server)) is not None:
        writer.write(answer(b'{"echo":' + body + b"}", extra=b"x-request-id: req-1\r\nx-ratelimit-a: 1\r\n"))
        await writer.drain()


async def test_calls_reuse_one_kept_alive_connection_and_frame_the_request() -> None:
    async with serving(echo_forever) as server:
        lean = client(server)
        for i in range(3):
            response = await lean.post("/chat/completions", b'{"n":%d}' % i)
            assert response.status == 200
            assert response.headers["x-request-id"] == "req-1"
            assert await response.read() == b'{"echo":{"n":%d}}' % i
        lean.close()
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in head
    assert b"Authorization: Bearer sk-up" in head
    assert b"Content-Length: 7" in head
    assert not any(line.lower().startswith(b"accept-encoding") for line in head)


@dataclass
class Stream:
    """How far a streaming server got with one answer."""

    pieces: int = 0  # chunks handed to its transport
    written: int = 0  # their bytes
    draining: bool = False  # waiting in drain: its buffers are full, the client does not read
    ended: bool = False  # the last chunk went out


def numbered(i: int) -> bytes:
    return b"data: %06d %s\n\n" % (i, b"x" * 4000)


async def test_a_chunked_stream_arrives_whole_and_in_order_with_back_pressure() -> None:
    # The server sends numbered pieces until the test lets it finish, then `tail` more; it ends on its
    # own after 64 MB, far more than the socket buffers hold, so a client that never stops reading gets
    # the whole answer (and the test fails) instead of an endless one.
    finish = asyncio.Event()
    most = 64 * 1024 * 1024 // len(numbered(0))
    tail = 64
    one_read = 256 * 1024  # the most asyncio's socket transport reads at once
    streams: list[Stream] = []

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await read_request(reader, server) is not None:
            stream = Stream()
            streams.append(stream)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            last: int | None = None  # numbered pieces until the test lets it finish, then `tail` more
            while last is None or stream.pieces < last:
                if last is None and (finish.is_set() or stream.pieces >= most):
                    last = stream.pieces + tail
                    continue
                piece = numbered(stream.pieces)
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                stream.pieces += 1
                stream.written += len(piece)
                stream.draining = True
                await writer.drain()
                stream.draining = False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            stream.ended = True

    looks: list[int] = []

    def held_up() -> bool:
        """The server waits in drain and wrote nothing more over three looks (or it ended)."""
        stream = streams[0]
        looks.append(stream.written)
        return stream.ended or (stream.draining and looks[-3:] == [stream.written] * 3)

    async with serving(chunked) as server:
        lean = client(server)
        response = await lean.post("/chat/completions", b"{}")
        chunks = response.chunks()
        received = [await anext(chunks)]
        # the reader holds off: the client stops reading the socket once it holds HIGH_WATER, and the
        # server's writes wait, far from the end of the answer
        assert await await_until(held_up, 10)
        stream = streams[0]
        assert not stream.ended
        assert stream.draining
        held = stream.written
        # all the client took in meanwhile comes as one chunk: its high-water mark and one read at most
        received.append(await anext(chunks))
        assert len(received[-1]) <= HIGH_WATER + one_read
        # the reader reads on: the socket is read again, the server's writes go on, and the answer ends
        finish.set()
        received += [chunk async for chunk in chunks]
        assert stream.ended and stream.written > held
        assert b"".join(received) == b"".join(numbered(i) for i in range(stream.pieces))
        # read to its end: the connection went back to the pool and serves the next call
        again = await lean.post("/chat/completions", b"{}")
        assert b"".join([c async for c in again.chunks()]) == b"".join(numbered(i) for i in range(tail))
        lean.close()
    assert server.connections == 1


async def answer_with_its_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
) -> None:
    """Read one request and answer `{"ok":<its body>}` (keep-alive, as every answer here)."""
    body = await read_request(reader, server)
    writer.write(answer(b'{"ok":' + (body or b"0") + b"}"))
    await writer.drain()


async def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error() -> None:
    async def one_answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await answer_with_its_body(reader, writer, server)
        # keep-alive was promised, yet the connection is closed once answered (an upstream whose idle
        # timeout is shorter than the client's)

    async with serving(one_answer_then_close) as server:
        lean = client(server)
        assert await (await lean.post("/x", b"1")).read() == b'{"ok":1}'
        # closed while idle in the pool, before the next call: the server hung up, and the pool saw it
        assert await await_until(lambda: server.open_now == 0 and lean.pool.open_connections == 0, 5)
        assert await (await lean.post("/x", b"2")).read() == b'{"ok":2}'
        lean.close()
    assert server.connections == 2
    # each request sent once, the second on the new connection (none went to the closed one and back)
    assert [request.split(b"\r\n\r\n", 1)[1] for request in server.requests] == [b"1", b"2"]


async def test_a_reused_connection_closed_before_the_first_byte_is_retried_on_a_new_one() -> None:
    async def one_answer_then_drop_the_next(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await answer_with_its_body(reader, writer, server)
        # keep-alive was promised, but the next request is read and dropped unanswered (the server
        # closed the connection as it came)
        await read_request(reader, server)

    async with serving(one_answer_then_drop_the_next) as server:
        lean = client(server)
        assert await (await lean.post("/x", b"1")).read() == b'{"ok":1}'
        assert await (await lean.post("/x", b"2")).read() == b'{"ok":2}'
        lean.close()
    assert server.connections == 2  # the first (its reuse dropped unanswered), then the fresh retry
    # the second request reached the kept connection, then went again on the new one
    assert [request.split(b"\r\n\r\n", 1)[1] for request in server.requests] == [b"1", b"2", b"2"]


async def test_a_first_connection_closed_before_answering_is_an_error_not_a_retry() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)

    async with serving(hang_up) as server:
        lean = client(server)
        with pytest.raises(UpstreamConnectionError):
            await lean.post("/x", b"{}")
        lean.close()
    assert server.connections == 1


async def test_silence_after_the_headers_times_out_and_drops_the_connection() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read()  # until the client gives up

    async with serving(stall) as server:
        lean = client(server, read_timeout_s=0.2)
        response = await lean.post("/x", b"{}")
        started = asyncio.get_running_loop().time()
        chunks = response.chunks()
        assert await anext(chunks) == b"hello"
        with pytest.raises(UpstreamReadTimeout):
            await anext(chunks)
        assert 0.15 <= asyncio.get_running_loop().time() - started < 2.0
        await asyncio.wait_for(server.closed.wait(), 5)
        assert lean.pool.open_connections == 0
        lean.close()


async def test_a_slow_trickle_runs_out_of_total_time() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(100):
            writer.write(b"1\r\n.\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with serving(trickle) as server:
        lean = client(server, read_timeout_s=1.0, total_timeout_s=0.3)
        response = await lean.post("/x", b"{}")
        with pytest.raises(UpstreamReadTimeout, match="ran out of time"):
            await response.read()
        lean.close()


async def test_nothing_listening_is_a_connection_error() -> None:
    async with serving(echo_forever) as server:
        port = server.port
    lean = LeanClient(
        f"http://127.0.0.1:{port}", {}, limit=1, connect_timeout_s=1, read_timeout_s=1, total_timeout_s=1
    )
    with pytest.raises(UpstreamConnectionError, match="could not connect"):
        await lean.post("/x", b"{}")
    assert lean.pool.open_connections == 0
    lean.close()


async def test_no_more_connections_than_the_limit_and_every_waiter_served() -> None:
    async def slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while (body := await read_request(reader, server)) is not None:
            await asyncio.sleep(0.02)
            writer.write(answer(body))
            await writer.drain()

    async with serving(slow_echo) as server:
        lean = client(server, limit=2)

        async def call(i: int) -> bytes:
            return await (await lean.post("/x", b"%d" % i)).read()

        answers = await asyncio.gather(*(call(i) for i in range(10)))
        assert answers == [b"%d" % i for i in range(10)]
        assert server.most_open == 2  # both used, never a third
        assert lean.pool.open_connections <= 2
        lean.close()


async def test_a_cancelled_waiter_gives_its_turn_back() -> None:
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while (body := await read_request(reader, server)) is not None:
            await release.wait()
            writer.write(answer(body))
            await writer.drain()

    async with serving(held) as server:
        lean = client(server, limit=1)
        first = asyncio.create_task(lean.post("/x", b"1"))
        assert await await_until(lambda: len(server.requests) == 1, 5)  # the one connection is busy
        waiting = asyncio.create_task(lean.post("/x", b"2"))
        assert await await_until(lambda: lean.pool.waiting == 1, 5)  # it waits its turn
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        assert await (await first).read() == b"1"
        # the turn the cancelled waiter gave back serves the next call (a lost turn would hang here)
        assert await (await asyncio.wait_for(lean.post("/x", b"3"), 5)).read() == b"3"
        assert server.requests[-1].endswith(b"3") and len(server.requests) == 2
        assert lean.pool.open_connections == 1
        lean.close()


async def test_garbage_instead_of_http_is_a_connection_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serving(garbage) as server:
        lean = client(server)
        with pytest.raises(UpstreamConnectionError, match="not valid HTTP"):
            await lean.post("/x", b"{}")
        lean.close()


async def test_a_body_without_a_length_ends_with_the_connection() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"whole":')
        await writer.drain()
        writer.write(b"true}")
        await writer.drain()

    async with serving(until_close) as server:
        lean = client(server)
        assert await (await lean.post("/x", b"{}")).read() == b'{"whole":true}'
        assert lean.pool.open_connections == 0  # not kept: it ended by closing
        lean.close()


async def test_a_reader_that_stops_early_drops_the_connection() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"3\r\nabc\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async with serving(endless) as server:
        lean = client(server)
        response = await lean.post("/x", b"{}")
        chunks = response.chunks()
        assert (await anext(chunks)).startswith(b"abc")
        await chunks.aclose()
        await asyncio.wait_for(server.closed.wait(), 5)  # the upstream saw the abort
        assert lean.pool.open_connections == 0
        lean.close()


async def test_an_https_base_is_verified_against_the_trusted_authorities(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(certificates / "server.crt", certificates / "server.key")
    async with serving(echo_forever, tls=server_side) as server:
        settings: dict[str, Any] = {
            "limit": 2,
            "connect_timeout_s": 5,
            "read_timeout_s": 5,
            "total_timeout_s": 10,
        }
        trusting = LeanClient(
            f"https://127.0.0.1:{server.port}/v1",
            {},
            ssl_context=ssl.create_default_context(cafile=str(certificates / "ca.crt")),
            **settings,
        )
        for i in range(2):  # the TLS connection is kept and reused too
            assert await (await trusting.post("/x", b"%d" % i)).read() == b'{"echo":%d}' % i
        trusting.close()
        assert server.connections == 1
        stranger = LeanClient(f"https://127.0.0.1:{server.port}/v1", {}, **settings)  # the system's CAs
        with pytest.raises(UpstreamConnectionError, match="could not connect"):
            await stranger.post("/x", b"{}")
        stranger.close()


async def test_one_base_under_two_keys_gets_a_client_per_key() -> None:
    # An Anthropic base may be the OpenAI-compatible one (a gateway speaking both), under its own key:
    # each request passed through carries the credentials of its own target.
    async with serving(echo_forever) as server:
        base = f"http://127.0.0.1:{server.port}"
        settings = Settings(
            upstream_api_base=base, upstream_api_key=SecretStr("sk-openai"), embedded_redis=False
        )
        router = UpstreamRouter(settings, on_retry=lambda: None)
        openai_key = {"Authorization": "Bearer sk-openai"}
        openai = router.raw_client(base, openai_key)
        anthropic = router.raw_client(base, {"x-api-key": "sk-anthropic"})
        assert router.raw_client(base, dict(openai_key)) is openai
        await (await openai.post("/embeddings", b"{}")).read()
        await (await anthropic.post("/v1/messages", b"{}")).read()
        router.close()
    first, second = (request.split(b"\r\n\r\n")[0].split(b"\r\n") for request in server.requests)
    assert b"Authorization: Bearer sk-openai" in first and not any(b"x-api-key" in h for h in first)
    assert b"x-api-key: sk-anthropic" in second and not any(b"Authorization" in h for h in second)
