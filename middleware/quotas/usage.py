"""Tokens an upstream answer used, from its `usage` object, in either API's shape.

Chat Completions: `{"prompt_tokens", "completion_tokens", "total_tokens"}`; Responses and Anthropic
Messages: `{"input_tokens", "output_tokens"}` (Anthropic adds cache read/creation input tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def tokens_used(usage: Any) -> int:
    """Total tokens of one `usage` dict (0 for anything that is not one)."""
    if not isinstance(usage, Mapping):
        return 0
    counted = 0
    for name in _FIELDS:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            counted += value
    if counted == 0:
        total = usage.get("total_tokens")
        if isinstance(total, int) and not isinstance(total, bool) and total > 0:
            counted = total
    return counted


def tokens_in_body(raw: bytes) -> int:
    """Tokens of a whole JSON answer (chat.completion, response, message)."""
    if b'"usage"' not in raw:
        return 0
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(data, dict):
        return 0
    usage = data.get("usage")
    if usage is None and isinstance(data.get("response"), dict):  # Responses API stream events
        usage = data["response"].get("usage")
    if usage is None and isinstance(data.get("message"), dict):  # Anthropic message_start
        usage = data["message"].get("usage")
    return tokens_used(usage)


def tokens_in_sse(chunk: bytes) -> int:
    """Tokens reported in the `data:` events of one piece of an SSE stream (0 when none)."""
    if b'"usage"' not in chunk:
        return 0
    counted = 0
    for line in chunk.split(b"\n"):
        if line.startswith(b"data:") and b'"usage"' in line:
            counted += tokens_in_body(line[5:].strip())
    return counted
