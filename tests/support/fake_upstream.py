"""A fake OpenAI-compatible LLM server for tests and benchmarks.

A raw ASGI app (no framework, orjson for JSON) so that it is not the bottleneck of a load run.

In tests::

    with FakeUpstream() as fake:
        fake.script(Reply(status=429), Reply(content="hello"))
        client = openai.OpenAI(base_url=fake.base_url, api_key="x")

For benchmarks, in its own process::

    python -m tests.support.fake_upstream --port 9100 [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import inspect
import logging
import re
import threading
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson

from tests.support.server_thread import ServerThread

__all__ = ["FakeUpstream", "RecordedRequest", "Reply", "Responder", "make_app", "schema_instance"]

MODELS = ("fake-model", "fake-model-large", "fake-judge")


@dataclass
class Reply:
    """One scripted upstream answer for ``POST /v1/chat/completions``."""

    content: str | None = None
    json: dict[str, Any] | list[Any] | None = None
    # each {"name": str, "arguments": "<json string>" (a dict is json-dumped)}
    tool_calls: list[dict[str, Any]] | None = None
    status: int = 200
    error_message: str | None = None
    error_type: str | None = None
    delay: float = 0.0  # seconds before the response headers
    chunk_delay: float = 0.0  # seconds between stream chunks
    fail_mid_stream: bool = False  # send some of the body, then drop the connection
    finish_reason: str | None = None
    headers: dict[str, str] | None = None  # extra response headers, e.g. {"retry-after": "0"}


Responder = Callable[[dict[str, Any]], "Reply | str | dict[str, Any] | Awaitable[Any] | None"]


@dataclass
class RecordedRequest:
    path: str
    method: str
    headers: dict[str, str]
    body: Any
    received_at: float
    query: str = ""
    aborted: bool = False
    aborted_at: float | None = None
    completed: bool = False
    status: int | None = None
    raw_body: bytes = field(default=b"", repr=False)

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return messages if isinstance(messages, list) else []


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


# ---------------------------------------------------------------------------------------------
# JSON schema -> a minimal valid instance
# ---------------------------------------------------------------------------------------------

_STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "fake@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}


def _resolve_ref(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def schema_instance(schema: dict[str, Any], root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """Build a small instance that validates against ``schema`` (the common subset of JSON Schema)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 12:
        return None
    if "$ref" in schema:
        return schema_instance(_resolve_ref(schema["$ref"], root), root, depth + 1)
    if "const" in schema:
        return copy.deepcopy(schema["const"])
    if schema.get("enum"):
        return copy.deepcopy(schema["enum"][0])
    if "default" in schema and depth > 0:
        return copy.deepcopy(schema["default"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return schema_instance((non_null or options)[0], root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            part = _resolve_ref(part["$ref"], root) if "$ref" in part else part
            for k, v in part.items():
                if k == "properties":
                    merged.setdefault("properties", {}).update(v)
                elif k == "required":
                    merged.setdefault("required", []).extend(v)
                else:
                    merged.setdefault(k, v)
        return schema_instance(merged, root, depth + 1)

    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ is None:
        if "properties" in schema or "required" in schema:
            typ = "object"
        elif "items" in schema or "prefixItems" in schema:
            typ = "array"
        else:
            typ = "string"

    if typ == "object":
        props: dict[str, Any] = schema.get("properties", {})
        required = list(schema.get("required", []))
        obj: dict[str, Any] = {}
        for name in required:
            obj[name] = schema_instance(props.get(name, {}), root, depth + 1)
        min_props = schema.get("minProperties", 0)
        for name, sub in props.items():
            if len(obj) >= min_props:
                break
            obj.setdefault(name, schema_instance(sub, root, depth + 1))
        return obj
    if typ == "array":
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        n = max(int(schema.get("minItems", 0)), len(prefix))
        out: list[Any] = []
        for i in range(n):
            sub = prefix[i] if i < len(prefix) else (items if isinstance(items, dict) else {})
            value = schema_instance(sub, root, depth + 1)
            if i and isinstance(value, str):
                value = f"{value}{i}"
            elif i and isinstance(value, int | float) and not isinstance(value, bool):
                value = value + i if "maximum" not in sub else value
            out.append(value)
        return out
    if typ == "string":
        fmt = schema.get("format")
        text = _STRING_FORMATS.get(fmt, "fake") if isinstance(fmt, str) else "fake"
        min_len = int(schema.get("minLength", 0))
        if len(text) < min_len:
            text = text + "x" * (min_len - len(text))
        if "maxLength" in schema:
            text = text[: int(schema["maxLength"])]
        return text
    if typ in ("integer", "number"):
        return _number(schema, integer=typ == "integer")
    if typ == "boolean":
        return True
    if typ == "null":
        return None
    return None


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    xlo = schema.get("exclusiveMinimum")
    xhi = schema.get("exclusiveMaximum")
    step = 1 if integer else 0.5
    value: float
    if lo is not None:
        value = lo
    elif xlo is not None:
        value = xlo + step
    elif hi is not None and hi < 0:
        value = hi
    elif xhi is not None and xhi <= 0:
        value = xhi - step
    else:
        value = 0
    if xhi is not None and value >= xhi:
        value = (xhi + (xlo if xlo is not None else (lo if lo is not None else xhi - 2))) / 2
    if hi is not None and value > hi:
        value = hi
    multiple = schema.get("multipleOf")
    if multiple:
        value = -(-value // multiple) * multiple
    if integer:
        iv = int(value)
        if iv < value:
            iv += 1
        return iv
    return float(value)


# ---------------------------------------------------------------------------------------------
# Reply building
# ---------------------------------------------------------------------------------------------

_WORDS = re.compile(r"\S+\s*|\s+")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def default_content(body: dict[str, Any]) -> str:
    """``"fake answer to: <last user message text>"``."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return f"fake answer to: {_text_of(message.get('content'))}"
    return "fake answer"


def _count_tokens(body: dict[str, Any]) -> int:
    total = 0
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            total += 4 + len(_text_of(message.get("content")).split())
    return max(total, 1)


def _chunks(text: str) -> list[str]:
    parts = _WORDS.findall(text)
    return parts or [text]


_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    408: ("timeout", None),
    409: ("conflict_error", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "overloaded"),
    504: ("timeout", None),
}


def error_body(status: int, message: str | None = None, error_type: str | None = None) -> bytes:
    mapped_type, code = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return orjson.dumps(
        {
            "error": {
                "message": message or f"fake upstream error {status}",
                "type": error_type or mapped_type,
                "param": None,
                "code": code,
            }
        }
    )


@dataclass
class _Plan:
    """A resolved reply: what each choice says."""

    contents: list[str | None]
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    reply: Reply


def _plan(body: dict[str, Any], reply: Reply | None) -> _Plan:
    reply = reply or Reply()
    n = body.get("n") or 1
    try:
        n = max(1, int(n))
    except (TypeError, ValueError):
        n = 1
    tool_calls: list[dict[str, Any]] | None = None
    if reply.tool_calls:
        tool_calls = []
        for call in reply.tool_calls:
            args = call.get("arguments", "{}")
            if not isinstance(args, str):
                args = orjson.dumps(args).decode()
            tool_calls.append(
                {
                    "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": args},
                }
            )
    is_json = False
    content: str | None
    if reply.json is not None:
        content, is_json = orjson.dumps(reply.json).decode(), True
    elif reply.content is not None:
        content = reply.content
    elif tool_calls:
        content = None
    else:
        fmt = body.get("response_format") or {}
        ftype = fmt.get("type") if isinstance(fmt, dict) else None
        if ftype == "json_schema":
            spec = fmt.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            content, is_json = orjson.dumps(schema_instance(schema or {"type": "object"})).decode(), True
        elif ftype == "json_object":
            content, is_json = "{}", True
        else:
            content = default_content(body)
    contents: list[str | None] = []
    for i in range(n):
        if content is None or is_json or i == 0:
            contents.append(content)
        else:
            contents.append(f"{content} #{i}")
    finish = reply.finish_reason or ("tool_calls" if tool_calls else "stop")
    return _Plan(contents=contents, tool_calls=tool_calls, finish_reason=finish, reply=reply)


def _usage(body: dict[str, Any], plan: _Plan) -> dict[str, int]:
    prompt = _count_tokens(body)
    completion = 0
    for c in plan.contents:
        completion += len((c or "").split())
    if plan.tool_calls:
        completion += sum(len(tc["function"]["arguments"]) // 4 + 1 for tc in plan.tool_calls) * len(
            plan.contents
        )
    completion = max(completion, 1)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_json(body: dict[str, Any], plan: _Plan, completion_id: str, created: int) -> dict[str, Any]:
    choices = []
    for i, content in enumerate(plan.contents):
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if plan.tool_calls:
            message["tool_calls"] = copy.deepcopy(plan.tool_calls)
        choices.append(
            {"index": i, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.get("model") or MODELS[0],
        "choices": choices,
        "usage": _usage(body, plan),
        "system_fingerprint": "fp_fake",
    }


def stream_events(body: dict[str, Any], plan: _Plan, completion_id: str, created: int) -> list[bytes]:
    """Every SSE event of a streamed answer, each ``data: {json}\\n\\n``, ending with ``[DONE]``."""
    model = body.get("model") or MODELS[0]
    opts = body.get("stream_options") or {}
    include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            obj["usage"] = None
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    events: list[bytes] = []
    for i, content in enumerate(plan.contents):
        if plan.tool_calls and not content:
            first_call = plan.tool_calls[0]
            events.append(
                chunk(
                    i,
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [_tool_head(0, first_call)],
                    },
                )
            )
            calls = [(0, first_call, True)] + [(k, tc, False) for k, tc in enumerate(plan.tool_calls) if k]
        else:
            events.append(chunk(i, {"role": "assistant", "content": ""}))
            for piece in _chunks(content or ""):
                if piece:
                    events.append(chunk(i, {"content": piece}))
            calls = [(k, tc, False) for k, tc in enumerate(plan.tool_calls or [])]
        for k, tc, head_sent in calls:
            if not head_sent:
                events.append(chunk(i, {"tool_calls": [_tool_head(k, tc)]}))
            args = tc["function"]["arguments"]
            for start in range(0, len(args), 8):
                events.append(
                    chunk(
                        i, {"tool_calls": [{"index": k, "function": {"arguments": args[start : start + 8]}}]}
                    )
                )
        events.append(chunk(i, {}, plan.finish_reason))
    if include_usage:
        usage_obj: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [],
            "usage": _usage(body, plan),
        }
        events.append(b"data: " + orjson.dumps(usage_obj) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _tool_head(index: int, call: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": index,
        "id": call["id"],
        "type": "function",
        "function": {"name": call["function"]["name"], "arguments": ""},
    }


# ---------------------------------------------------------------------------------------------
# The ASGI app
# ---------------------------------------------------------------------------------------------

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_MODELS_BODY = orjson.dumps(
    {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in MODELS],
    }
)


class FakeUpstreamApp:
    """The raw ASGI callable. ``FakeUpstream`` wraps it with a server thread."""

    def __init__(self, *, record: bool = True, default_delay: float = 0.0) -> None:
        self.record = record
        self.default_delay = default_delay
        self.responder: Responder | None = None
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._script: collections.deque[Reply] = collections.deque()

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
            await self._send_simple(send, rec, 200, _embeddings(body))
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
        headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        rec.completed = True

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

        watch = _DisconnectWatch(rec, receive)
        try:
            if delay > 0 and await watch.wait(delay):
                return
            if reply is not None and reply.status != 200:
                await self._send_simple(
                    send,
                    rec,
                    reply.status,
                    error_body(reply.status, reply.error_message, reply.error_type),
                    _extra(reply),
                )
                return
            if not streaming:
                await self._respond_plain(body, rec, send, reply, watch)
                return
            plan = _plan(body, reply)
            events = stream_events(body, plan, _completion_id(), int(time.time()))
            rec.status = 200
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*_SSE_HEADERS, *_extra(plan.reply)],
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

    async def _respond_plain(
        self,
        body: dict[str, Any],
        rec: RecordedRequest,
        send: Any,
        reply: Reply | None,
        watch: _DisconnectWatch | None = None,
    ) -> None:
        if reply is not None and reply.status != 200:
            await self._send_simple(
                send,
                rec,
                reply.status,
                error_body(reply.status, reply.error_message, reply.error_type),
                _extra(reply),
            )
            return
        plan = _plan(body, reply)
        payload = orjson.dumps(completion_json(body, plan, _completion_id(), int(time.time())))
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


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _embeddings(body: dict[str, Any]) -> bytes:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    data = []
    for i, item in enumerate(items):
        text = str(item)
        vec = [((zlib.crc32(f"{k}:{text}".encode()) % 2000) - 1000) / 1000.0 for k in range(8)]
        data.append({"object": "embedding", "index": i, "embedding": vec})
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": body.get("model") or MODELS[0],
            "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
        }
    )


class _DisconnectWatch:
    """Watches ASGI ``receive()`` for ``http.disconnect`` while the app delays or streams."""

    def __init__(self, rec: RecordedRequest, receive: Any) -> None:
        self.rec = rec
        self.receive = receive
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
        """Sleep ``seconds``; True if the client went away meanwhile."""
        try:
            await asyncio.wait_for(self.event.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.task.cancel()


def make_app(*, record: bool = True, default_delay: float = 0.0) -> FakeUpstreamApp:
    _install_quiet_filter()
    return FakeUpstreamApp(record=record, default_delay=default_delay)


# ---------------------------------------------------------------------------------------------
# In-process server for tests
# ---------------------------------------------------------------------------------------------


class FakeUpstream:
    """The fake served from a background thread on 127.0.0.1 (a free port)."""

    def __init__(self, *, port: int = 0, default_delay: float = 0.0) -> None:
        self.app = make_app(default_delay=default_delay)
        self._server = ServerThread(self.app, port=port, lifespan="on", graceful_shutdown_timeout=0.5)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        return self._server.base_url

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what an OpenAI client or litellm ``api_base`` wants."""
        return f"{self._server.base_url}/v1"

    # -- behaviour ----------------------------------------------------------------------------
    @property
    def responder(self) -> Responder | None:
        return self.app.responder

    @responder.setter
    def responder(self, fn: Responder | None) -> None:
        self.app.responder = fn

    @property
    def default_delay(self) -> float:
        return self.app.default_delay

    @default_delay.setter
    def default_delay(self, seconds: float) -> None:
        self.app.default_delay = seconds

    def script(self, *replies: Reply) -> None:
        """Queue replies, consumed in order by the next ``/v1/chat/completions`` calls."""
        self.app.script(*replies)

    def reset(self) -> None:
        """Forget recorded requests, the queued script, the responder and any default delay."""
        self.app.reset()
        self.app.default_delay = 0.0

    # -- observations -------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far (the records themselves are live)."""
        return self.app.requests

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.app.requests if r.path.endswith("/chat/completions")]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
        """Poll ``predicate`` until true or ``timeout``; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return bool(predicate())
            time.sleep(interval)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        self.wait_for(lambda: len(self.app.requests) >= n, timeout)
        return self.requests

    async def await_for(
        self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01
    ) -> bool:
        """``wait_for`` for async tests (does not block the event loop)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return bool(predicate())
            await asyncio.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Command line (benchmarks)
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fake_upstream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before every answer")
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args(argv)
    app = make_app(record=False, default_delay=args.delay_ms / 1000.0)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=args.backlog,
        timeout_keep_alive=60,
    )


if __name__ == "__main__":
    main()
