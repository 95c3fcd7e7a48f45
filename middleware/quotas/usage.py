"""Tokens an upstream answer used, from its `usage` object, in either API's shape.

Chat Completions: `{"prompt_tokens", "completion_tokens", "total_tokens"}`; Responses and Anthropic
Messages: `{"input_tokens", "output_tokens"}` (Anthropic adds cache read/creation input tokens).
"""

from __future__ import annotations

import re
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
_USAGE_KEY = b'"usage"'
# What follows a `usage` key when its value is null (a Response object's stream events before the
# last say `"usage":null`). In JSON text a quoted key cannot be found inside a string: there every
# quote is escaped.
_NULL_VALUE = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*null")


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


def usage_in_body(raw: bytes) -> Any:
    """The `usage` of a whole JSON answer or of one stream event (None when it has none)."""
    if not _has_usage(raw):
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if usage is None and isinstance(data.get("response"), dict):  # Responses API stream events
        usage = data["response"].get("usage")
    if usage is None and isinstance(data.get("message"), dict):  # Anthropic message_start
        usage = data["message"].get("usage")
    return usage


def _has_usage(raw: bytes) -> bool:
    """Whether `raw` has a `usage` key whose value is not null (only those are worth parsing)."""
    key = raw.find(_USAGE_KEY)
    while key >= 0:
        end = key + len(_USAGE_KEY)
        if _NULL_VALUE.match(raw, end) is None:
            return True
        key = raw.find(_USAGE_KEY, end)
    return False


def tokens_in_body(raw: bytes) -> int:
    """Tokens of a whole JSON answer (chat.completion, response, message)."""
    return tokens_used(usage_in_body(raw))


def tokens_in_sse(chunk: bytes) -> int:
    """Tokens reported in the `data:` events of one piece of an SSE stream (0 when none)."""
    if b'"usage"' not in chunk:
        return 0
    counted = 0
    for line in chunk.split(b"\n"):
        if line.startswith(b"data:") and b'"usage"' in line:
            counted += tokens_in_body(line[5:].strip())
    return counted


class StreamUsage:
    """The tokens one answer's event stream reports, fed chunk by chunk as it passes.

    Each usage field counts with the largest value seen: Anthropic's `message_delta` repeats counts
    of `message_start` cumulatively (output tokens, in newer versions input tokens too), while chat
    completions and the Responses API report usage once, at the end."""

    __slots__ = ("_fields", "_tail")

    def __init__(self) -> None:
        self._fields: dict[str, int] = {}
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        lines = self._tail + chunk if self._tail else chunk
        cut = lines.rfind(b"\n") + 1
        self._lines(lines[:cut])
        self._tail = lines[cut:]

    def total(self) -> int:
        """The tokens counted, once the stream ended (a last line without its newline included)."""
        if self._tail:
            self._lines(self._tail)
            self._tail = b""
        return tokens_used(self._fields)

    def _lines(self, text: bytes) -> None:
        """Whole lines: the `data:` lines with a `usage` key (found in the text, not line by line:
        the Responses API's events are kilobytes long)."""
        key = text.find(_USAGE_KEY)
        while key >= 0:
            if _NULL_VALUE.match(text, key + len(_USAGE_KEY)) is not None:
                key = text.find(_USAGE_KEY, key + len(_USAGE_KEY))
                continue
            start = text.rfind(b"\n", 0, key) + 1
            end = text.find(b"\n", key)
            if end < 0:
                end = len(text)
            line = text[start:end]
            key = text.find(_USAGE_KEY, end)
            if line.startswith(b"data:"):
                usage = usage_in_body(line[5:].strip())
                if isinstance(usage, Mapping):
                    for name in (*_FIELDS, "total_tokens"):
                        value = usage.get(name)
                        if (
                            isinstance(value, int)
                            and not isinstance(value, bool)
                            and value > self._fields.get(name, 0)
                        ):
                            self._fields[name] = value
