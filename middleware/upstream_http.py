"""A lean HTTP/1.1 client for the hot path's upstream calls (chat completions, the Responses API).

Each of those calls sends one JSON body to one OpenAI-compatible base and reads one answer, whole or
streamed. aiohttp's session costs about 59 µs of CPU per such call on the reference machine, this
client about 10 (docs/ARCHITECTURE.md, "Performance of the hot path"): the request goes out as one
pre-framed write, the answer is parsed by httptools (llhttp, the parser uvicorn serves with), and
nothing else runs per call. What it does:

- keep-alive connections per origin, reused last-in first-out, at most `limit` at once (callers past
  it wait their turn), idle ones closed after `keepalive_s`;
- one request at a time per connection; an answer read whole, or streamed with back-pressure (the
  socket is paused while the reader lags);
- timeouts: connecting, between two reads of the answer, and in total;
- a reused connection that the server closed before sending a byte of the answer is retried once on a
  new connection (the server closed it idle: the request was never read);
- TLS for https bases (the system's trust store, as aiohttp).

What it does not (the other routes keep aiohttp, in `forward.py`): redirects, proxies, cookies,
compression (it sends no Accept-Encoding, so answers come as they are), HTTP/2, bodies of unknown length.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncGenerator
from typing import cast

import httptools
from yarl import URL

# A streamed answer's socket is paused once this much is waiting for its reader.
HIGH_WATER = 256 * 1024


class UpstreamConnectionError(ConnectionError):
    """The connection failed: refused, reset, closed before the answer ended, or a malformed answer."""


class UpstreamReadTimeout(TimeoutError):
    """The upstream sent nothing for longer than the read timeout, or the call ran out of time."""


class _RetryOnNewConnection(Exception):
    """A reused connection closed before the answer's first byte."""


class LeanResponse:
    """An upstream answer: `status` and `headers` (lower-case names) once they came; the body read
    whole (`read`) or as it arrives (`chunks`). `release` gives the connection back when the body was
    read to its end (else drops it); `close` drops it."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_connection",
        "_deadline",
        "_done",
        "_error",
        "_finished",
        "_headers_done",
        "_keep_alive",
        "_last_read",
        "_loop",
        "_paused",
        "_raw_headers",
        "_read_timeout_s",
        "_started",
        "_streaming",
        "_timer",
        "_until_close",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, connection: _Connection, read_timeout_s: float, deadline: float) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._connection: _Connection | None = connection
        self._loop = connection.loop
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._streaming = False
        self._headers_done = False
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._keep_alive = False
        self._started = False  # a byte of the answer came
        self._until_close = False  # the body ends when the connection closes
        self._read_timeout_s = read_timeout_s
        self._deadline = deadline
        self._last_read = self._loop.time()
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(
            min(self._last_read + read_timeout_s, deadline), self._check_time
        )
        self._finished = False  # released or closed

    # --- what the reader calls -----------------------------------------------------------------

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool once it is read."""
        while not self._done:
            await self._wait()
        chunks = self._chunks
        self._chunks = []
        self.release()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives (what came together, joined); the connection goes back to the pool
        when the body ended, and is dropped when the reader stops early."""
        self._streaming = True
        try:
            while True:
                if self._chunks:
                    chunks = self._chunks
                    self._chunks = []
                    self._buffered = 0
                    if self._paused and self._connection is not None:
                        self._paused = False
                        self._last_read = self._loop.time()
                        self._connection.resume_reading()
                    yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
                elif self._done:
                    return
                else:
                    await self._wait()
        finally:
            self.release()

    async def __aenter__(self) -> LeanResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        """Give the connection back if the answer was read to its end, else drop it."""
        self._finish(self._done and self._error is None and self._keep_alive)

    def close(self) -> None:
        """Drop the connection (the upstream sees the abort at once)."""
        self._finish(False)

    def _finish(self, reusable: bool) -> None:
        if self._finished:
            return
        self._finished = True
        self._cancel_timer()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.finished(reusable)

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    async def _wait_headers(self) -> None:
        while not self._headers_done:
            await self._wait()

    # --- what the connection calls -------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_data(self) -> None:
        self._started = True
        self._last_read = self._loop.time()

    def _on_headers(self, status: int) -> None:
        self.status = status
        headers = self.headers
        for name, value in self._raw_headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self._raw_headers = []
        self._until_close = "content-length" not in headers and "transfer-encoding" not in headers
        self._headers_done = True
        self._wake()

    def _on_body(self, data: bytes) -> None:
        self._chunks.append(data)
        if self._streaming:
            self._buffered += len(data)
            if self._buffered > HIGH_WATER and not self._paused and self._connection is not None:
                self._paused = True
                self._connection.pause_reading()
        self._wake()

    def _on_complete(self, keep_alive: bool) -> None:
        self._done = True
        self._keep_alive = keep_alive
        self._cancel_timer()
        self._wake()

    def _on_lost(self, exc: BaseException | None) -> None:
        if self._done:
            return
        if self._headers_done and self._until_close and exc is None:
            self._on_complete(False)  # a body without a length ends with the connection
            return
        reason = f": {exc}" if exc is not None else ""
        self._fail(UpstreamConnectionError(f"the upstream closed the connection{reason}"))

    def _fail(self, error: BaseException) -> None:
        if self._done or self._error is not None:
            return
        self._error = error
        self._cancel_timer()
        self._wake()

    def _check_time(self) -> None:
        self._timer = None
        if self._done or self._error is not None:
            return
        now = self._loop.time()
        if now >= self._deadline:
            self._timed_out("the upstream call ran out of time")
        elif self._paused:  # the reader lags: not the upstream's silence
            self._timer = self._loop.call_at(
                min(now + self._read_timeout_s, self._deadline), self._check_time
            )
        elif now - self._last_read >= self._read_timeout_s:
            self._timed_out("the upstream sent nothing in time")
        else:
            self._timer = self._loop.call_at(
                min(self._last_read + self._read_timeout_s, self._deadline), self._check_time
            )

    def _timed_out(self, message: str) -> None:
        self._fail(UpstreamReadTimeout(message))
        connection = self._connection
        if connection is not None:
            connection.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the upstream; it carries one request at a time."""

    def __init__(self, pool: ConnectionPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: LeanResponse | None = None
        self.closed = False
        self.reused = False  # it carried an answer before
        self.idle_since = 0.0

    # asyncio's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection cannot be trusted
            self.abort()
            return
        response._on_data()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(UpstreamConnectionError(f"the upstream's answer is not valid HTTP: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is not None:
            response._on_lost(exc)
        self.pool._lost(self)

    # httptools' side
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response._on_headers(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._on_body(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is not None:
            response._on_complete(self.parser.should_keep_alive())

    # the pool's side
    def send(self, data: bytes, response: LeanResponse) -> None:
        assert self.transport is not None
        self.response = response
        self.transport.write(data)

    def finished(self, reusable: bool) -> None:
        """The answer was read (reusable) or given up on."""
        self.response = None
        if reusable and not self.closed:
            self.reused = True
            self.parser = httptools.HttpResponseParser(self)
            self.pool._put(self)
        else:
            self.abort()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()  # connection_lost follows


class ConnectionPool:
    """Keep-alive connections to one origin (scheme, host, port), at most `limit` open at once."""

    def __init__(
        self,
        origin: URL,
        *,
        limit: int,
        connect_timeout_s: float,
        keepalive_s: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if origin.scheme not in ("http", "https") or not origin.host:
            raise ValueError(f"not an http(s) URL: {origin}")
        self.host = origin.host
        self.port = origin.port or (443 if origin.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if origin.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        default_port = origin.is_default_port()
        self.host_header = origin.raw_host if default_port else f"{origin.raw_host}:{self.port}"
        self._limit = max(1, limit)
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._idle: list[_Connection] = []
        self._open = 0  # connections open or opening, idle ones included
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    async def acquire(self, *, fresh: bool = False) -> _Connection:
        """An idle connection (unless `fresh`), else a new one; waits while `limit` are open."""
        if self._closed:
            raise UpstreamConnectionError("the upstream client is closed")
        loop = asyncio.get_running_loop()
        idle = self._idle
        if idle and not fresh:
            now = loop.time()
            while idle:
                connection = idle.pop()
                if connection.closed or connection.transport is None or connection.transport.is_closing():
                    continue
                if now - connection.idle_since < self._keepalive_s:
                    return connection
                connection.abort()
        if self._open >= self._limit:
            if fresh and idle:  # make room: an idle connection goes for a new one
                idle.pop(0).abort()
            else:
                waiter: asyncio.Future[_Connection | None] = loop.create_future()
                self._waiters.append(waiter)
                try:
                    handed = await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled():
                        self._give_back(waiter.result())
                    else:
                        self._waiters.remove(waiter)
                    raise
                if handed is not None and not fresh:
                    return handed
                if handed is not None:
                    handed.abort()
        self._open += 1
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self, loop),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError as exc:
            self._slot_freed()
            raise UpstreamReadTimeout("could not connect to the upstream in time") from exc
        except OSError as exc:
            self._slot_freed()
            raise UpstreamConnectionError(f"could not connect to the upstream: {exc}") from exc
        except BaseException:
            self._slot_freed()
            raise
        return protocol

    def _give_back(self, connection: _Connection | None) -> None:
        if connection is None:
            self._slot_freed()
        else:
            self._put(connection)

    def _put(self, connection: _Connection) -> None:
        if self._closed:
            connection.abort()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = connection.loop.time()
        self._idle.append(connection)
        oldest = self._idle[0]  # close one long-idle connection now and then, oldest first
        if connection.idle_since - oldest.idle_since >= self._keepalive_s:
            self._idle.pop(0)
            oldest.abort()

    def _lost(self, connection: _Connection) -> None:
        if connection in self._idle:
            self._idle.remove(connection)
        self._slot_freed()

    def _slot_freed(self) -> None:
        self._open -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self._closed = True
        for connection in self._idle:
            connection.abort()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamConnectionError("the upstream client is closed"))

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def waiting(self) -> int:
        """Callers waiting for a connection (all `limit` are in use)."""
        return sum(1 for waiter in self._waiters if not waiter.done())


class LeanClient:
    """POSTs to paths of one base URL over a `ConnectionPool`, with fixed headers framed once."""

    def __init__(
        self,
        base: str,
        headers: dict[str, str],
        *,
        limit: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        total_timeout_s: float,
        keepalive_s: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base = URL(base.rstrip("/"))
        self.pool = ConnectionPool(
            self.base.origin(),
            limit=limit,
            connect_timeout_s=connect_timeout_s,
            keepalive_s=keepalive_s,
            ssl_context=ssl_context,
        )
        lines = [f"Host: {self.pool.host_header}"] + [f"{name}: {value}" for name, value in headers.items()]
        self._headers = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._read_timeout_s = read_timeout_s
        self._total_timeout_s = total_timeout_s
        self._request_lines: dict[tuple[str, str], bytes] = {}

    def request_line(self, method: str, path: str) -> bytes:
        """`<method> <base path + path> HTTP/1.1` and the fixed headers, framed once per method and
        path (a path with a query string is framed anew each time)."""
        found = self._request_lines.get((method, path))
        if found is None:
            target = self.base.raw_path.rstrip("/") + path
            found = f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + self._headers
            if "?" not in path:
                self._request_lines[(method, path)] = found
        return found

    async def post(self, path: str, body: bytes, extra_headers: dict[str, str] | None = None) -> LeanResponse:
        """Send `body` to `path` (under the base); the answer once its headers came. Raises
        UpstreamConnectionError or UpstreamReadTimeout (TimeoutError)."""
        return await self.request("POST", path, body, extra_headers)

    async def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> LeanResponse:
        """`method` with `body` (its length known; empty for none) to `path` (under the base, with its
        query string, as encoded), with `headers` besides the fixed ones. Not for HEAD (an answer
        without a body it announces) nor `Expect: 100-continue`."""
        head = self.request_line(method, path)
        extra = b""
        if headers:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
        data = b"%sContent-Length: %d\r\n%s\r\n%s" % (head, len(body), extra, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._total_timeout_s
        try:
            return await self._send(data, deadline, fresh=False)
        except _RetryOnNewConnection:
            return await self._send(data, deadline, fresh=True)

    async def _send(self, data: bytes, deadline: float, *, fresh: bool) -> LeanResponse:
        connection = await self.pool.acquire(fresh=fresh)
        reused = connection.reused
        response = LeanResponse(connection, self._read_timeout_s, deadline)
        connection.send(data, response)
        try:
            await response._wait_headers()
        except UpstreamConnectionError:
            response.close()
            if reused and not fresh and not response._started:
                raise _RetryOnNewConnection from None
            raise
        except BaseException:
            response.close()
            raise
        return response

    def close(self) -> None:
        self.pool.close()
