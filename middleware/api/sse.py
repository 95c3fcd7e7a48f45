"""OpenAI's server-sent events for an answer that is already complete (rerank mode streams its winner)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

CONTENT_CHUNK_CHARS = 64


async def completion_events(
    completion: dict[str, Any], *, include_usage: bool, extra: dict[str, Any] | None = None
) -> AsyncIterator[bytes]:
    """Frame a finished chat.completion as OpenAI's SSE chunks; `extra` fields go in a last chunk."""
    head = {
        "id": completion.get("id", "chatcmpl-rerank"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", int(time.time())),
        "model": completion.get("model", ""),
    }

    def event(choices: list[dict[str, Any]], **fields: Any) -> bytes:
        return b"data: " + orjson.dumps({**head, "choices": choices, **fields}) + b"\n\n"

    choice = completion["choices"][0]
    message = choice["message"]
    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    content = message.get("content") or ""
    for start in range(0, len(content), CONTENT_CHUNK_CHARS):
        piece = content[start : start + CONTENT_CHUNK_CHARS]
        yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
    for position, call in enumerate(message.get("tool_calls") or []):
        delta = {"tool_calls": [{"index": position, **call}]}
        yield event([{"index": 0, "delta": delta, "finish_reason": None}])
    yield event([{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}])
    if include_usage and completion.get("usage"):
        yield event([], usage=completion["usage"])
    if extra:
        yield event([], **extra)
    yield b"data: [DONE]\n\n"
