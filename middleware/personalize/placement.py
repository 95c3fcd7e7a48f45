"""Where the persona block goes in the Responses and Anthropic Messages APIs, and how the app's own
`instructions` are put back into what the Responses API returns (the app never sees the persona).

Responses API: the block is appended to `instructions` (per request, never stored as an input item,
so `store` / `previous_response_id` chains carry no stale copy). Messages API: the block is a text
block after the app's `system`, whose own blocks (and `cache_control` breakpoints) stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from middleware.errors import ValidationFailed

# Stream events whose `response` object carries `instructions`.
RESPONSE_EVENTS = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "response.queued",
    }
)
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')


def with_instructions(instructions: Any, block: str) -> tuple[str, int | None]:
    """The app's instructions, then the block (the block alone when the app sent none); and how
    many leading characters are the app's own (None: the app sent no instructions)."""
    if instructions is None:
        return block, None
    if not isinstance(instructions, str):
        raise ValidationFailed("'instructions' must be a string", param="instructions")
    if not instructions:
        return block, 0
    return f"{instructions}\n\n{block}", len(instructions)


def app_instructions(stored: Any, app_chars: int | None) -> Any:
    """What the app sent as `instructions`, from the value the upstream holds."""
    if app_chars is None:
        return None
    return stored[:app_chars] if isinstance(stored, str) else stored


def with_system(system: Any, block: str) -> list[dict[str, Any]]:
    """The app's `system` as a list of blocks, then the persona as one more text block."""
    persona = {"type": "text", "text": block}
    if system is None or system == "":
        return [persona]
    if isinstance(system, str):
        return [{"type": "text", "text": system}, persona]
    if isinstance(system, list) and all(isinstance(b, dict) for b in system):
        return [*system, persona]
    raise ValidationFailed("'system' must be a string or a list of content blocks", param="system")


def restore_response(response: dict[str, Any], app_chars: int | None) -> None:
    """Put the app's own `instructions` back into a Response object (in place)."""
    if "instructions" in response:
        response["instructions"] = app_instructions(response["instructions"], app_chars)


def restore_response_bytes(data: bytes, app_chars: int | None) -> tuple[bytes, str | None]:
    """A whole Response JSON with the app's instructions restored, and the response id."""
    response = orjson.loads(data)
    if not isinstance(response, dict):
        return data, None
    restore_response(response, app_chars)
    response_id = response.get("id")
    return orjson.dumps(response), response_id if isinstance(response_id, str) else None


def response_id_of(data: bytes) -> str | None:
    """The id of a whole Response JSON (no persona to hide)."""
    try:
        response = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    found = response.get("id") if isinstance(response, dict) else None
    return found if isinstance(found, str) else None


class ResponsesStreamRestorer:
    """Relays a Responses API event stream, restoring `instructions` in the response.* events.

    Every other event is passed on byte for byte. `response_id` is known once response.created
    went by; `last_sequence` is the last `sequence_number` seen (for a closing error event)."""

    def __init__(self, app_chars: int | None, *, restore: bool = True, sent: str | None = None) -> None:
        self._app_chars = app_chars
        self._restore = restore
        # Fast path when the instructions sent upstream are known: swap their JSON text in place
        # (the upstream encodes them as orjson does in the common case; otherwise parse and rewrite).
        self._swap: tuple[bytes, bytes] | None = None
        if restore and sent is not None:
            self._swap = (
                b'"instructions":' + orjson.dumps(sent),
                b'"instructions":' + orjson.dumps(app_instructions(sent, app_chars)),
            )
        self._pending = b""
        self.response_id: str | None = None
        self._last_event = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete events of what arrived so far (a trailing partial event is held back)."""
        if (
            not self._pending
            and self.response_id is not None
            and chunk.endswith(b"\n\n")
            and (not self._restore or b'"instructions"' not in chunk)
        ):
            # Whole events, none to restore (deltas and the like): passed on as they came, unsplit.
            self._last_event = chunk
            return chunk
        data = self._pending + chunk if self._pending else chunk
        out: list[bytes] = []
        end = 0
        if b"\r" in data:
            for match in _EVENT_END.finditer(data):
                out.append(self._event(data[end : match.end()]))
                end = match.end()
        else:
            cut = data.find(b"\n\n")
            while cut >= 0:
                out.append(self._event(data[end : cut + 2]))
                end = cut + 2
                cut = data.find(b"\n\n", end)
        self._pending = data[end:]
        return out[0] if len(out) == 1 else b"".join(out)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._event(rest) if rest.strip() else rest

    @property
    def last_sequence(self) -> int | None:
        found = _SEQUENCE.findall(self._last_event)
        return int(found[-1]) if found else None

    def _event(self, raw: bytes) -> bytes:
        if raw.strip():
            self._last_event = raw
        if b'"instructions"' not in raw or (not self._restore and self.response_id is not None):
            return raw
        if self._swap is not None and self.response_id is not None and self._swap[0] in raw:
            return raw.replace(self._swap[0], self._swap[1])
        lines = raw.split(b"\n")
        for i, line in enumerate(lines):
            if line.startswith(b"data:"):
                lines[i] = self._data_line(line)
        return b"\n".join(lines)

    def _data_line(self, line: bytes) -> bytes:
        payload = line[5:]
        trailing = b"\r" if payload.endswith(b"\r") else b""
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return line
        if not isinstance(event, dict) or event.get("type") not in RESPONSE_EVENTS:
            return line
        response = event.get("response")
        if not isinstance(response, dict):
            return line
        if self.response_id is None and isinstance(response.get("id"), str):
            self.response_id = response["id"]
        if not self._restore:
            return line
        restore_response(response, self._app_chars)
        return b"data: " + orjson.dumps(event) + trailing


def error_event(message: str, code: str, sequence_number: int | None) -> bytes:
    """A Responses API `error` stream event."""
    event = {
        "type": "error",
        "code": code,
        "message": message,
        "param": None,
        "sequence_number": (sequence_number or 0) + 1,
    }
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


async def restore_stream(
    chunks: AsyncIterator[bytes], restorer: ResponsesStreamRestorer
) -> AsyncIterator[bytes]:
    """`chunks` through `restorer` (a convenience for callers without their own loop)."""
    async for chunk in chunks:
        out = restorer.feed(chunk)
        if out:
            yield out
    tail = restorer.flush()
    if tail:
        yield tail
