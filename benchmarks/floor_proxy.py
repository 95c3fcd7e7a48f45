"""The floor: the least a Python proxy with a persona can do, to measure this machine's limits with.

    .venv/bin/python benchmarks/floor_proxy.py --port P --upstream http://127.0.0.1:U/v1 --redis-port R

One process, uvloop: each request is parsed by httptools, its body decoded (orjson), one Redis GET (the
persona, on one kept connection), the persona put before the messages (or after the instructions), the body sent upstream over the
proxy's own lean client (`middleware/upstream_http.py`), and the answer relayed as it comes (headers
from the upstream kept as they are). No auth, no limits, no metrics, no errors handled: not a product,
a yardstick. `proxy_overhead.py --with-litellm --floor` runs it beside the proxy in the same run
(`_harness.floor_proxy`).
"""

from __future__ import annotations

import argparse
import asyncio

import hiredis
import httptools
import orjson
import uvloop

from middleware.upstream_http import LeanClient


class RedisConnection(asyncio.Protocol):
    """One Redis connection, one command at a time (enough at c=1; at c=16, queued in order)."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: list[asyncio.Future[object]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.waiting.pop(0).set_result(reply)

    async def call(self, *args: str) -> object:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(hiredis.pack_command(args))  # type: ignore[attr-defined]
        return await future


class Request(asyncio.Protocol):
    def __init__(self, redis: RedisConnection, upstream: LeanClient) -> None:
        self.redis = redis
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.url = b""
        self.answering: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        if self.parser.get_method() != b"POST":  # a readiness probe
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            return
        task = asyncio.get_running_loop().create_task(self.answer(self.url, body))
        self.answering.add(task)  # a reference until done: the loop keeps only a weak one
        task.add_done_callback(self.answering.discard)

    async def answer(self, url: bytes, raw: bytes) -> None:
        body = orjson.loads(raw)
        persona = await self.redis.call("GET", f"persona:{body.get('user')}")
        if isinstance(persona, bytes) and "messages" in body:
            body["messages"] = [{"role": "system", "content": persona.decode()}, *body["messages"]]
        elif isinstance(persona, bytes):  # the Responses API
            body["instructions"] = f"{body.get('instructions') or ''}\n\n{persona.decode()}"
        path = url.decode().removeprefix("/v1")
        response = await self.upstream.post(path, orjson.dumps(body))
        kind = response.headers.get("content-type", "application/json")
        if body.get("stream"):
            self.transport.write(
                b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n"
                % (response.status, kind.encode())
            )
            async for chunk in response.chunks():
                self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.transport.write(b"0\r\n\r\n")
            return
        data = await response.read()
        self.transport.write(
            b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (response.status, kind.encode(), len(data), data)
        )


async def serve(port: int, upstream: str, redis_port: int) -> None:
    loop = asyncio.get_running_loop()
    _, redis = await loop.create_connection(RedisConnection, "127.0.0.1", redis_port)
    client = LeanClient(
        upstream,
        {"Content-Type": "application/json"},
        limit=64,
        connect_timeout_s=5,
        read_timeout_s=60,
        total_timeout_s=600,
    )
    server = await loop.create_server(lambda: Request(redis, client), "127.0.0.1", port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream, args.redis_port))


if __name__ == "__main__":
    main()
