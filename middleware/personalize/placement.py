"""Where the persona block goes in the Responses and Anthropic Messages APIs, and how the app's own
`instructions` are put back into what the Responses API returns (the app never sees the persona).

Responses API: the block is appended to `instructions` (per request, never stored as an input item,
so `store` / `previous_response_id` chains carry no stale copy). Messages API: the block is a text
block after the app's `system`, whose own blocks (and `cache_control` breakpoints) stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
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
# A Response object's `id` as its first member, a plain ASCII string (anything else is parsed).
_FIRST_ID = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"id"[ \t\r\n]*:[ \t\r\n]*"([\x20\x21\x23-\x5b\x5d-\x7e]*)"')
# The response id of a response.* event written as the API writes it (`type`, `sequence_number`,
# then `response`, whose first member is `id`), from the start of its data line; anything else is parsed.
_EVENT_RESPONSE_ID = re.compile(
    rb'^data: ?\{"type":"(?:'
    + b"|".join(re.escape(name.encode()) for name in sorted(RESPONSE_EVENTS))
    + rb')",(?:"sequence_number":\d+,)?"response":\{"id":"([\x20\x21\x23-\x5b\x5d-\x7e]*)"',
    re.MULTILINE,
)
_INSTRUCTIONS_KEY = b'"instructions"'
_COLON_AFTER = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*")
_MEMBER_OPENERS = frozenset(b"{,")
_JSON_SPACE = frozenset(b" \t\r\n")


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


def restore_response_bytes(
    data: bytes, app_chars: int | None, swap: InstructionsSwap | None = None
) -> tuple[bytes, str | None]:
    """A whole Response JSON with the app's instructions restored, and the response id.

    With `swap` (the instructions sent are known) the upstream's bytes are kept and only the
    instructions' text is replaced; parsed and rewritten when the upstream encoded them otherwise."""
    if swap is not None:
        swapped = swap.apply(data)
        if swapped is not None:
            return swapped, response_id_of(swapped)
    response = orjson.loads(data)
    if not isinstance(response, dict):
        return data, None
    restore_response(response, app_chars)
    response_id = response.get("id")
    return orjson.dumps(response), response_id if isinstance(response_id, str) else None


def response_id_of(data: bytes) -> str | None:
    """The `id` of a whole Response JSON: read off the front where it is the object's first member
    (as the API writes it), else parsed; never the id of an output item (a member of a nested object)."""
    first = _FIRST_ID.match(data)
    if first is not None:
        return first.group(1).decode("ascii")
    try:
        response = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    found = response.get("id") if isinstance(response, dict) else None
    return found if isinstance(found, str) else None


class InstructionsSwap:
    """Puts the app's own `instructions` back into JSON text without parsing it: the value of every
    `instructions` member that is exactly the text sent upstream (encoded as orjson encodes it) is
    replaced by the app's own; every other byte stays as the upstream wrote it.

    A member, never text inside a string: the key's opening quote follows `{` or `,` (whitespace
    between), and inside a JSON string every quote is escaped. The sent text holds the persona block,
    which nothing but the echo of the request's instructions carries."""

    __slots__ = ("_own", "_sent")

    def __init__(self, sent: str, app_chars: int | None) -> None:
        self._sent = orjson.dumps(sent)
        self._own = orjson.dumps(app_instructions(sent, app_chars))

    def apply(self, data: bytes) -> bytes | None:
        """`data` with the app's instructions in place of those sent; None when no `instructions`
        member holds the sent text as encoded here (the upstream escaped it otherwise: parse)."""
        sent = self._sent
        parts: list[bytes] = []
        end = 0
        # the short key is looked for, the long value compared where it starts (a search for the
        # value itself would prepare its whole text on every call)
        key = data.find(_INSTRUCTIONS_KEY)
        while key >= 0:
            value = _member_value(data, key)
            if value > 0 and data.startswith(sent, value):
                parts.append(data[end:value])
                parts.append(self._own)
                end = value + len(sent)
            key = data.find(_INSTRUCTIONS_KEY, max(end, key + len(_INSTRUCTIONS_KEY)))
        if not parts:
            return None
        parts.append(data[end:])
        return b"".join(parts)


def _member_value(data: bytes, key: int) -> int:
    """Where the value of the member whose key `"instructions"` starts at `key` begins; -1 when those
    bytes are not a member's key."""
    i = key - 1
    while i >= 0 and data[i] in _JSON_SPACE:
        i -= 1
    if i < 0 or data[i] not in _MEMBER_OPENERS:
        return -1
    colon = _COLON_AFTER.match(data, key + len(_INSTRUCTIONS_KEY))
    return -1 if colon is None else colon.end()


class ResponsesStreamRestorer:
    """Relays a Responses API event stream, restoring `instructions` in the response.* events.

    Every other event is passed on byte for byte. `response_id` is known once response.created
    went by; `last_sequence` is the last `sequence_number` seen (for a closing error event)."""

    def __init__(
        self, app_chars: int | None, *, restore: bool = True, swap: InstructionsSwap | None = None
    ) -> None:
        self._app_chars = app_chars
        self._restore = restore
        # When the instructions sent upstream are known, their JSON text is swapped in place (the
        # upstream encodes them as orjson does in the common case; otherwise parse and rewrite).
        self._swap = swap if restore else None
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
            cut = _past_blank_line(data, 0)
            while cut >= 0:
                out.append(self._event(data[end:cut]))
                end = cut
                cut = _past_blank_line(data, end)
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
        if self.response_id is None:
            first = _EVENT_RESPONSE_ID.search(raw)
            if first is not None:
                self.response_id = first.group(1).decode("ascii")
        swapped = self._swap.apply(raw) if self._swap is not None else None
        if self.response_id is not None:
            if swapped is not None:
                return swapped
            if not self._restore:
                return raw
        # parsed: for the response id where it was not read off the front, and to restore
        # `instructions` where the swap found nothing (rewritten)
        rewrite = self._restore and swapped is None
        lines = (raw if swapped is None else swapped).split(b"\n")
        for i, line in enumerate(lines):
            if line.startswith(b"data:"):
                lines[i] = self._data_line(line, rewrite=rewrite)
        return b"\n".join(lines)

    def _data_line(self, line: bytes, *, rewrite: bool) -> bytes:
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
        if not rewrite:
            return line
        restore_response(response, self._app_chars)
        return b"data: " + orjson.dumps(event) + trailing


def _past_blank_line(data: bytes, start: int) -> int:
    """Where the first event from `start` ends (just past its `\n\n`); -1 when none ends there.

    Newlines are looked for one by one: a search for one byte is a memchr, one for two bytes a loop
    over every byte (a response.* event is kilobytes long, with a few newlines)."""
    newline = data.find(b"\n", start)
    while newline >= 0:
        if data[newline + 1 : newline + 2] == b"\n":
            return newline + 2
        newline = data.find(b"\n", newline + 1)
    return -1


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
    chunks: AsyncIterable[bytes | str | memoryview], restorer: ResponsesStreamRestorer
) -> AsyncIterator[bytes]:
    """`chunks` (a response body's, as starlette allows them: text encoded as UTF-8) through
    `restorer` (for callers without their own loop: a stored response's events replayed)."""
    async for chunk in chunks:
        out = restorer.feed(chunk.encode() if isinstance(chunk, str) else bytes(chunk))
        if out:
            yield out
    tail = restorer.flush()
    if tail:
        yield tail
