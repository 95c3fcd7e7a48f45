"""The OpenAI Responses API as the fake speaks it: Response objects, their stream events, and the
stored responses behind previous_response_id, retrieve, delete, input_items and cancel."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import orjson

from tests.support.fake_upstream.models import MODELS, Reply
from tests.support.fake_upstream.schema import schema_instance


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's `input` as a list of items (a string is one user message)."""
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    return [i for i in raw if isinstance(i, dict)] if isinstance(raw, list) else []


def _last_user_text(items: list[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("role") == "user":
            return _text_of(item.get("content"))
    return ""


class ResponsesStore:
    """Responses kept by id (store != false), as the real API keeps them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._responses: dict[str, dict[str, Any]] = {}
        self._inputs: dict[str, list[dict[str, Any]]] = {}

    def put(self, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._responses[response["id"]] = response
            self._inputs[response["id"]] = items

    def get(self, response_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._responses.get(response_id)

    def inputs(self, response_id: str) -> list[dict[str, Any]] | None:
        with self._lock:
            return self._inputs.get(response_id)

    def delete(self, response_id: str) -> bool:
        with self._lock:
            self._inputs.pop(response_id, None)
            return self._responses.pop(response_id, None) is not None


def build_response(
    body: dict[str, Any], reply: Reply | None, history: list[dict[str, Any]]
) -> dict[str, Any]:
    """The completed Response object for a request (`history`: the input items of the chain)."""
    items = [*history, *input_items(body)]
    output: list[dict[str, Any]] = []
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    answered_tool = any(i.get("type") == "function_call_output" for i in input_items(body))
    if reply is not None and reply.tool_calls:
        calls = reply.tool_calls
    elif tools and not answered_tool:
        calls = [{"name": tools[0]["name"], "arguments": schema_instance(tools[0].get("parameters") or {})}]
    else:
        calls = []
    for call in calls:
        args = call.get("arguments", "{}")
        output.append(
            {
                "type": "function_call",
                "id": f"fc_{uuid.uuid4().hex[:24]}",
                "call_id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                "name": call["name"],
                "arguments": args if isinstance(args, str) else orjson.dumps(args).decode(),
                "status": "completed",
            }
        )
    if not calls:
        fmt = ((body.get("text") or {}).get("format") or {}) if isinstance(body.get("text"), dict) else {}
        if reply is not None and reply.content is not None:
            text = reply.content
        elif reply is not None and reply.json is not None:
            text = orjson.dumps(reply.json).decode()
        elif fmt.get("type") == "json_schema":
            text = orjson.dumps(schema_instance(fmt.get("schema") or {"type": "object"})).decode()
        else:
            text = f"fake answer to: {_last_user_text(items)}"
        output.append(
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        )
    in_tokens = max(
        1,
        sum(len(_text_of(i.get("content")).split()) for i in items)
        + len(str(body.get("instructions") or "").split()),
    )
    out_tokens = max(
        1, sum(len(str(o.get("arguments") or _text_of(o.get("content"))).split()) for o in output)
    )
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model") or MODELS[0],
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": in_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": in_tokens + out_tokens,
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _event(kind: str, seq: int, **fields: Any) -> bytes:
    return (
        b"event: "
        + kind.encode()
        + b"\ndata: "
        + orjson.dumps({"type": kind, "sequence_number": seq, **fields})
        + b"\n\n"
    )


def _halves(text: str) -> list[str]:
    words = text.split(" ")
    middle = max(1, len(words) // 2)
    first = " ".join(words[:middle])
    rest = text[len(first) :]
    return [first, rest] if rest else [first]


def stream_events(response: dict[str, Any]) -> list[bytes]:
    """The events of a streamed response, framed as the API frames them (`event:` + `data:`)."""
    events: list[bytes] = []
    seq = 0

    def add(kind: str, **fields: Any) -> None:
        nonlocal seq
        events.append(_event(kind, seq, **fields))
        seq += 1

    start = {**response, "status": "in_progress", "output": [], "usage": None}
    add("response.created", response=start)
    add("response.in_progress", response=start)
    for index, item in enumerate(response["output"]):
        if item["type"] == "function_call":
            add(
                "response.output_item.added",
                output_index=index,
                item={**item, "arguments": "", "status": "in_progress"},
            )
            for part in _halves(item["arguments"]):
                add(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=part,
                )
            add(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            )
            add("response.output_item.done", output_index=index, item=item)
            continue
        text = item["content"][0]["text"]
        add(
            "response.output_item.added",
            output_index=index,
            item={**item, "status": "in_progress", "content": []},
        )
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        add(
            "response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=empty
        )
        for part in _halves(text):
            add(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                delta=part,
                logprobs=[],
            )
        add(
            "response.output_text.done",
            item_id=item["id"],
            output_index=index,
            content_index=0,
            text=text,
            logprobs=[],
        )
        add(
            "response.content_part.done",
            item_id=item["id"],
            output_index=index,
            content_index=0,
            part=item["content"][0],
        )
        add("response.output_item.done", output_index=index, item=item)
    add("response.completed", response=response)
    return events
