"""A streamed answer as server-sent events, the way OpenAI chunks it."""

from __future__ import annotations

import re
from typing import Any

import orjson

from tests.support.fake_upstream.models import MODELS
from tests.support.fake_upstream.responses import Plan, usage

_WORDS = re.compile(r"\S+\s*|\s+")


def _chunks(text: str) -> list[str]:
    parts = _WORDS.findall(text)
    return parts or [text]


def stream_events(body: dict[str, Any], plan: Plan, completion_id: str, created: int) -> list[bytes]:
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
            "usage": usage(body, plan),
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
