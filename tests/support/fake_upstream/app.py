"""The raw ASGI app: routes, scripted replies, delays, streaming and client disconnects."""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from tests.support.fake_upstream import other_apis, responses_api
from tests.support.fake_upstream.models import MODELS, RecordedRequest, Reply, Responder
from tests.support.fake_upstream.responses import (
    completion_id,
    completion_json,
    embeddings_body,
    error_body,
    plan_reply,
)
from tests.support.fake_upstream.sse import stream_events


class _DropConnection(Exception):
    """Raised inside the app to make uvicorn close the connection mid-response."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _DropConnection)


_quiet_filter_installed = False


def _install_quiet_filter() -> None:
    global _quiet_filter_installed
    if not _quiet_filter_installed:
        logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
        _quiet_filter_installed = True


_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
# What the real API sends on every answer (tracing and rate-limit state).
_API_HEADERS = [
    (b"openai-processing-ms", b"3"),
    (b"x-ratelimit-limit-requests", b"10000"),
    (b"x-ratelimit-remaining-requests", b"9999"),
    (b"openai-organization", b"org-fake-upstream-account"),
]


def _api_headers() -> list[tuple[bytes, bytes]]:
    return [(b"x-request-id", f"req_{uuid.uuid4().hex}".encode()), *_API_HEADERS]


_MODELS_BODY = orjson.dumps(
    {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in MODELS],
    }
)


class FakeUpstreamApp:
    """The raw ASGI callable. ``FakeUpstream`` wraps it with a server thread."""

    def __init__(self, *, record: bool = True, default_delay: float = 0.0, exact_delays: bool = False) -> None:
        self.record = record
        self.default_delay = default_delay
        # Delays waited out to the microsecond (`_DisconnectWatch.wait`): for the benchmarks' own
        # process; in a test's process the turn-by-turn wait would take CPU from everything else.
        self.exact_delays = exact_delays
        self.responder: Responder | None = None
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._script: collections.deque[Reply] = collections.deque()
        self.stored_responses = responses_api.ResponsesStore()

    # -- state shared with the test thread ----------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._script.clear()
        self.responder = None

    def _next_scripted(self) -> Reply | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    # -- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return

        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                bad_json = True
        rec = RecordedRequest(
            path=scope["path"],
            method=scope["method"],
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body=body,
            received_at=time.monotonic(),
            query=scope.get("query_string", b"").decode("latin-1"),
            raw_body=raw,
        )
        if self.record:
            with self._lock:
                self._requests.append(rec)

        path, method = scope["path"], scope["method"]
        if path.endswith("/chat/completions") and method == "POST":
            if bad_json or not isinstance(body, dict):
                await self._send_simple(send, rec, 400, error_body(400, "request body is not a JSON object"))
                return
            await self._chat(body, rec, receive, send)
        elif path.endswith("/models") and method == "GET":
            await self._send_simple(send, rec, 200, _MODELS_BODY)
        elif path.endswith("/embeddings") and method == "POST" and isinstance(body, dict):
            if body.get("encoding_format") == "base64":
                await self._send_simple(send, rec, 200, orjson.dumps(other_apis.embeddings_json(body)))
            else:
                await self._send_simple(send, rec, 200, embeddings_body(body))
        elif path.endswith("/responses") and method == "POST" and isinstance(body, dict):
            await self._responses(body, rec, receive, send)
        elif "/responses/" in path:
            await self._stored_response(path, method, rec, send)
        elif path.endswith("/messages/count_tokens") and method == "POST" and isinstance(body, dict):
            tokens = other_apis.message_json(body)["usage"]["input_tokens"]
            await self._send_simple(send, rec, 200, orjson.dumps({"input_tokens": tokens}))
        elif path.endswith("/messages") and method == "POST" and isinstance(body, dict):
            await self._messages(body, rec, send)
        elif path.endswith("/completions") and method == "POST" and isinstance(body, dict):
            await self._send_simple(send, rec, 200, orjson.dumps(other_apis.completion_json(body)))
        elif path.endswith("/audio/transcriptions") and method == "POST":
            await self._send_simple(send, rec, 200, orjson.dumps(other_apis.transcription_json(raw)))
        elif path.endswith("/audio/speech") and method == "POST":
            audio = bytes(range(256)) * 64  # binary answer, streamed in several chunks
            rec.status = 200
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"audio/mpeg"), *_api_headers()],
                }
            )
            for i in range(0, len(audio), 4096):
                await send({"type": "http.response.body", "body": audio[i : i + 4096], "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            rec.completed = True
        elif path.endswith("/files") and method == "POST":
            await self._send_simple(send, rec, 200, orjson.dumps(other_apis.file_json(raw)))
        elif "/models/" in path and method == "GET":
            found = other_apis.model_json(path.rsplit("/models/", 1)[1])
            if found is None:
                await self._send_simple(send, rec, 404, error_body(404, "The model does not exist"))
            else:
                await self._send_simple(send, rec, 200, orjson.dumps(found))
        else:
            await self._send_simple(send, rec, 404, error_body(404, f"no route {method} {path}"))

    async def _send_simple(
        self,
        send: Any,
        rec: RecordedRequest,
        status: int,
        payload: bytes,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        rec.status = status
        headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode()), *_api_headers(), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        rec.completed = True

    async def _send_events(
        self,
        send: Any,
        rec: RecordedRequest,
        headers: Sequence[tuple[bytes, bytes]],
        events: Sequence[bytes],
        cut: int | None = None,
    ) -> None:
        """An event stream, one event per chunk; with `cut`, the connection drops before event `cut`."""
        rec.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, *headers]})
        for i, event in enumerate(events):
            if cut is not None and i >= cut:
                raise _DropConnection()
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})
        rec.completed = True

    async def _send_error_reply(self, send: Any, rec: RecordedRequest, reply: Reply) -> None:
        payload = error_body(reply.status, reply.error_message, reply.error_type)
        await self._send_simple(send, rec, reply.status, payload, _extra(reply))

    async def _resolve(self, body: dict[str, Any]) -> Reply | None:
        scripted = self._next_scripted()
        if scripted is not None:
            return scripted
        responder = self.responder
        if responder is None:
            return None
        result = responder(body)
        if inspect.isawaitable(result):
            result = await result
        if result is None or isinstance(result, Reply):
            return result
        if isinstance(result, str):
            return Reply(content=result)
        if isinstance(result, dict | list):
            return Reply(json=result)
        raise TypeError(f"responder returned {type(result).__name__}")

    async def _chat(self, body: dict[str, Any], rec: RecordedRequest, receive: Any, send: Any) -> None:
        reply = await self._resolve(body)
        delay = reply.delay if reply is not None else self.default_delay
        chunk_delay = reply.chunk_delay if reply is not None else 0.0
        streaming = bool(body.get("stream"))
        if delay <= 0 and not streaming and (reply is None or not reply.fail_mid_stream):
            # fast path: no waiting, nothing to watch
            await self._respond_plain(body, rec, send, reply)
            return

        watch = _DisconnectWatch(rec, receive, exact=self.exact_delays)
        try:
            if delay > 0 and await watch.wait(delay):
                return
            if reply is not None and reply.status != 200:
                await self._send_error_reply(send, rec, reply)
                return
            if not streaming:
                await self._respond_plain(body, rec, send, reply, watch)
                return
            plan = plan_reply(body, reply)
            events = stream_events(body, plan, completion_id(), int(time.time()))
            rec.status = 200
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*_SSE_HEADERS, *_api_headers(), *_extra(plan.reply)],
                }
            )
            cut = max(2, len(events) // 2) if plan.reply.fail_mid_stream else None
            for i, event in enumerate(events):
                if cut is not None and i >= cut:
                    watch.finishing = True
                    raise _DropConnection()
                if watch.event.is_set():
                    return
                last = i == len(events) - 1
                if last:
                    watch.finishing = True
                await send({"type": "http.response.body", "body": event, "more_body": not last})
                if not last and chunk_delay > 0 and await watch.wait(chunk_delay):
                    return
                elif not last and chunk_delay <= 0:
                    await asyncio.sleep(0)
            rec.completed = True
        finally:
            watch.close()

    async def _responses(self, body: dict[str, Any], rec: RecordedRequest, receive: Any, send: Any) -> None:
        reply = await self._resolve(body)
        delay = reply.delay if reply is not None else self.default_delay
        if delay > 0:  # before the headers, as on chat completions
            watch = _DisconnectWatch(rec, receive, exact=self.exact_delays)
            try:
                if await watch.wait(delay):
                    return
            finally:
                watch.close()
        if reply is not None and reply.status != 200:
            await self._send_error_reply(send, rec, reply)
            return
        history: list[dict[str, Any]] = []
        previous = body.get("previous_response_id")
        if previous:
            found = self.stored_responses.get(previous)
            if found is None:
                message = f"Previous response with id '{previous}' not found."
                await self._send_simple(send, rec, 404, error_body(404, message))
                return
            history = [*(self.stored_responses.inputs(previous) or []), *found["output"]]
        response = responses_api.build_response(body, reply, history)
        if body.get("store", True) is not False and self.record:  # benchmarks keep nothing
            self.stored_responses.put(response, [*history, *responses_api.input_items(body)])
        if not body.get("stream"):
            indented = reply is not None and reply.indented
            data = json.dumps(response, indent=2).encode() if indented else orjson.dumps(response)
            await self._send_simple(send, rec, 200, data, _extra(reply))
            return
        events = responses_api.stream_events(response)
        cut = len(events) // 2 if reply is not None and reply.fail_mid_stream else None
        await self._send_events(send, rec, [*_api_headers(), *_extra(reply)], events, cut)

    async def _stored_response(self, path: str, method: str, rec: RecordedRequest, send: Any) -> None:
        rest = path.split("/responses/", 1)[1]
        response_id, _, action = rest.partition("/")
        found = self.stored_responses.get(response_id)
        if found is None:
            message = f"Response with id '{response_id}' not found."
            await self._send_simple(send, rec, 404, error_body(404, message))
        elif method == "GET" and not action and "stream=true" in rec.query.split("&"):
            # the stored response's events, as when it streamed
            await self._send_events(send, rec, _api_headers(), responses_api.stream_events(found))
        elif method == "GET" and not action:
            await self._send_simple(send, rec, 200, orjson.dumps(found))
        elif method == "DELETE" and not action:
            self.stored_responses.delete(response_id)
            payload = {"id": response_id, "object": "response.deleted", "deleted": True}
            await self._send_simple(send, rec, 200, orjson.dumps(payload))
        elif method == "GET" and action == "input_items":
            items = [
                {"id": f"msg_{i}", **item}
                for i, item in enumerate(self.stored_responses.inputs(response_id) or [])
            ]
            page = {"object": "list", "data": items, "first_id": None, "last_id": None, "has_more": False}
            await self._send_simple(send, rec, 200, orjson.dumps(page))
        elif method == "POST" and action == "cancel":
            await self._send_simple(send, rec, 200, orjson.dumps({**found, "status": "cancelled"}))
        else:
            await self._send_simple(send, rec, 404, error_body(404, f"no route {method} {path}"))

    async def _messages(self, body: dict[str, Any], rec: RecordedRequest, send: Any) -> None:
        reply = await self._resolve(body)
        if reply is not None and reply.status != 200:
            payload = other_apis.anthropic_error(reply.status, reply.error_message or "fake error")
            await self._send_simple(send, rec, reply.status, payload, _extra(reply))
            return
        message = other_apis.message_json(body)
        if reply is not None and reply.content is not None:
            message["content"][0]["text"] = reply.content
        if not body.get("stream"):
            await self._send_simple(send, rec, 200, orjson.dumps(message), _extra(reply))
            return
        headers = [(b"request-id", f"req_{uuid.uuid4().hex}".encode()), *_extra(reply)]
        await self._send_events(send, rec, headers, other_apis.message_events(message))

    async def _respond_plain(
        self,
        body: dict[str, Any],
        rec: RecordedRequest,
        send: Any,
        reply: Reply | None,
        watch: _DisconnectWatch | None = None,
    ) -> None:
        if reply is not None and reply.status != 200:
            await self._send_error_reply(send, rec, reply)
            return
        plan = plan_reply(body, reply)
        payload = orjson.dumps(completion_json(body, plan, completion_id(), int(time.time())))
        if plan.reply.fail_mid_stream:
            rec.status = 200
            if watch is not None:
                watch.finishing = True
            headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode()), *_extra(plan.reply)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send(
                {"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True}
            )
            raise _DropConnection()
        if watch is not None:
            watch.finishing = True
        await self._send_simple(send, rec, 200, payload, _extra(plan.reply))


def _extra(reply: Reply | None) -> list[tuple[bytes, bytes]]:
    if reply is None or not reply.headers:
        return []
    return [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in reply.headers.items()]


# How much of a delay is waited out turn by turn rather than by a timer (see `_DisconnectWatch.wait`).
PRECISE_WAIT_S = 0.0015


class _DisconnectWatch:
    """Watches ASGI ``receive()`` for ``http.disconnect`` while the app delays or streams."""

    def __init__(self, rec: RecordedRequest, receive: Any, *, exact: bool = False) -> None:
        self.rec = rec
        self.receive = receive
        self.exact = exact
        self.event = asyncio.Event()
        self.finishing = False
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.finishing and not self.rec.completed:
                    self.rec.aborted_at = time.monotonic()
                    self.rec.aborted = True
                self.event.set()
                return

    async def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; True if the client went away meanwhile.

        The event loop's timers fire up to a millisecond late (they count whole milliseconds). With
        `exact`, the last stretch is waited out turn by turn: a benchmark's fixed delay is the same on
        every call, whichever the phase of the loop's clock (direct and proxied time to first byte
        compare)."""
        deadline = time.monotonic() + seconds
        try:
            await asyncio.wait_for(self.event.wait(), max(0.0, seconds - PRECISE_WAIT_S) if self.exact else seconds)
        except TimeoutError:
            if not self.exact:
                return False
        else:
            return True
        while time.monotonic() < deadline:
            if self.event.is_set():
                return True
            await asyncio.sleep(0)
        return self.event.is_set()

    def close(self) -> None:
        self.task.cancel()


def make_app(*, record: bool = True, default_delay: float = 0.0, exact_delays: bool = False) -> FakeUpstreamApp:
    _install_quiet_filter()
    return FakeUpstreamApp(record=record, default_delay=default_delay, exact_delays=exact_delays)
