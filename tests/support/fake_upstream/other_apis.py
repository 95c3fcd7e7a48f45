"""The other APIs the fake speaks: Anthropic Messages (and its stream), legacy completions,
embeddings (floats or base64), audio transcription and file uploads (multipart), models/{id}."""

from __future__ import annotations

import base64
import re
import struct
import time
import uuid
import zlib
from typing import Any

import orjson

from tests.support.fake_upstream.models import MODELS


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


# --- Anthropic Messages ----------------------------------------------------------------------------


def message_json(body: dict[str, Any]) -> dict[str, Any]:
    last = ""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            last = _text_of(message.get("content"))
            break
    text = f"fake answer to: {last}"
    system = body.get("system")
    system_words = len((system if isinstance(system, str) else _text_of(system)).split())
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or MODELS[0],
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": max(1, system_words + len(last.split())),
            "output_tokens": len(text.split()),
        },
    }


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def message_events(message: dict[str, Any]) -> list[bytes]:
    text = message["content"][0]["text"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    words = text.split(" ")
    middle = max(1, len(words) // 2)
    parts = [" ".join(words[:middle]), text[len(" ".join(words[:middle])) :]]
    events = [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        _sse("ping", {"type": "ping"}),
    ]
    events += [
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
        )
        for p in parts
        if p
    ]
    events += [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def anthropic_error(status: int, message: str) -> bytes:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }
    return orjson.dumps(
        {"type": "error", "error": {"type": kinds.get(status, "api_error"), "message": message}}
    )


# --- OpenAI: legacy completions, embeddings, audio, files, models ------------------------------------


def completion_json(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    choices = [
        {"text": f"fake completion of: {p}", "index": i, "logprobs": None, "finish_reason": "stop"}
        for i, p in enumerate(prompts)
    ]
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model") or MODELS[0],
        "choices": choices,
        "usage": {
            "prompt_tokens": len(prompts),
            "completion_tokens": 4 * len(prompts),
            "total_tokens": 5 * len(prompts),
        },
    }


def embedding_vector(text: str) -> list[float]:
    """Eight numbers derived from the text; exactly representable in float32."""
    return [((zlib.crc32(f"{k}:{text}".encode()) % 2000) - 1000) / 1024.0 for k in range(8)]


def embeddings_json(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(items):
        vector = embedding_vector(str(item))
        value: Any = vector
        if as_base64:
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": body.get("model") or MODELS[0],
        "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
    }


def multipart_fields(raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, content) of a multipart/form-data body (enough for the SDKs' uploads)."""
    fields: dict[str, tuple[str | None, bytes]] = {}
    if not raw.startswith(b"--"):
        return fields
    boundary = raw.split(b"\r\n", 1)[0]
    for part in raw.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        filename = re.search(rb'filename="([^"]*)"', head)
        if name:
            fields[name.group(1).decode()] = (
                filename.group(1).decode() if filename else None,
                content[:-2] if content.endswith(b"\r\n") else content,
            )
    return fields


def transcription_json(raw: bytes) -> dict[str, Any]:
    fields = multipart_fields(raw)
    filename, content = fields.get("file", (None, b""))
    return {"text": f"fake transcript of {filename} ({len(content)} bytes, crc {zlib.crc32(content)})"}


def file_json(raw: bytes) -> dict[str, Any]:
    fields = multipart_fields(raw)
    filename, content = fields.get("file", (None, b""))
    purpose = fields.get("purpose", (None, b""))[1].decode()
    return {
        "id": f"file-{uuid.uuid4().hex[:24]}",
        "object": "file",
        "bytes": len(content),
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
    }


def model_json(model: str) -> dict[str, Any] | None:
    if model not in MODELS:
        return None
    return {"id": model, "object": "model", "created": 0, "owned_by": "fake"}
