"""Addressable answers: every answer gets an id (`x-persona-response-id`) and, when it has an end user,
a feedback record written off the hot path.

The route opens a `PendingAnswer` before the upstream call; the answer layer hands it the body (or,
for a stream whose text is kept, the chunks as they were sent: `PendingAnswer.keep_stream`, only
references, and the record once the last byte is out: `PendingAnswer.ended`). The record is then
written behind the answer, in the round trip that carries the other writes after answers
(`store/write_behind.py`): building it (prompt digest, texts) happens there too, so the answer never
waits for it. A stream's text is read from its events without parsing each one where they have the
usual shape (`answer_text`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from middleware.config import Settings
from middleware.models import message_text
from middleware.store.feedback import FeedbackStore, Record

log = logging.getLogger("middleware.feedback")

RESPONSE_ID_HEADER = "x-persona-response-id"
ID_PREFIX = "pmr_"
# How many bytes of a stream are kept per character of text the record keeps: an event carries a few
# characters in a couple of hundred bytes of JSON (chat chunks, Responses and Messages deltas), so the
# cap on the text comes well before this cap on the bytes (events with logprobs are larger: a long
# answer's kept text may then end earlier).
STREAM_BYTES_PER_CHAR = 128


def new_response_id() -> str:
    return ID_PREFIX + os.urandom(12).hex()


def prompt_digest(prompt: Any) -> str:
    """The same conversation (as the app sent it, before any persona) gives the same digest."""
    return hashlib.sha256(orjson.dumps(prompt, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def last_user_turn(prompt: Any) -> str:
    """The last user message of a conversation (chat or Messages `messages`, Responses `input`)."""
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list):
        return ""
    for message in reversed(prompt):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def _parts_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _event_text(event: Any) -> str:
    """The answer text one JSON document or stream event carries (chat, Responses or Messages shape)."""
    if not isinstance(event, dict):
        return ""
    choices = event.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        part = first.get("message") or first.get("delta") or {}
        return _parts_text(part.get("content")) if isinstance(part, dict) else ""
    kind = event.get("type")
    if kind == "response.output_text.delta" or (kind == "content_block_delta"):
        delta = event.get("delta")
        if isinstance(delta, dict):
            return str(delta.get("text", ""))
        return str(delta or "")
    if isinstance(event.get("output_text"), str):
        return str(event["output_text"])
    output = event.get("output")
    if isinstance(output, list):  # a Responses API response
        return "".join(_parts_text(item.get("content")) for item in output if isinstance(item, dict))
    if event.get("type") == "message" and isinstance(event.get("content"), list):  # a Messages reply
        return _parts_text(event["content"])
    return ""


def answer_text(body: bytes) -> str:
    """The answer's text from a whole JSON body or from the bytes of its event stream."""
    stripped = body.lstrip()
    if stripped.startswith(b"{"):
        try:
            return _event_text(orjson.loads(stripped))
        except orjson.JSONDecodeError:
            return ""
    # the last line may be cut short (a client gone, the kept bytes' cap): read on its own
    cut = max(body.rfind(b"\n"), body.rfind(b"\r")) + 1
    whole, rest = body[:cut], body[cut:]
    text = _common_stream_text(whole)
    if text is None:
        text = _parsed_stream_text(whole)
    return text + _parsed_stream_text(rest) if rest else text


def _parsed_stream_text(body: bytes) -> str:
    """The text of every `data:` event of a stream, each parsed."""
    text = []
    for line in body.splitlines():
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload.startswith(b"{"):
            continue
        try:
            text.append(_event_text(orjson.loads(payload)))
        except orjson.JSONDecodeError:
            continue
    return "".join(text)


# The streams of the three APIs as their servers write them (compact JSON, keys in their usual
# order) are read without parsing each event: an expression finds the texts in the whole stream at
# once, and counts check that it found every event's. A quoted key or value cannot match inside a JSON
# string (there every quote is escaped), so each match and count is of the JSON itself. Any other
# stream is parsed event by event (`_parsed_stream_text`); both read the same text.
_JSON_TEXT = rb'"([^"\\]*(?:\\.[^"\\]*)*)"'
# chat completions: at each `choices`, the first choice's delta: its text, or no text (empty, `null`,
# the role alone), or no choice (the usage at the end); anything else is the second group: parse
_CHAT_CHOICES = re.compile(
    rb'"choices":\[(?:\{"index":[0-9]+,"delta":\{(?:"role":"assistant",?)?(?:"content":'
    + _JSON_TEXT
    + rb'|"content":null[,}]|\})|\]|(.))'
)
# the type of each event (b"" for an event without one first)
_EVENT_TYPES = re.compile(rb'data:(?<![^\r\n]data:)(?: ?\{"type":"([a-z_.]+)")?')
# the Responses API's text deltas (of the events below, only they have a `delta`)
_RESPONSES_DELTAS = re.compile(rb'"delta":' + _JSON_TEXT)
# Anthropic Messages: a content block's delta, its text or a delta of another kind (no text)
_MESSAGES_DELTAS = re.compile(
    rb'\{"type":"content_block_delta","index":[0-9]+,"delta":\{"type":"(?:text_delta","text":'
    + _JSON_TEXT
    + rb'|(?:input_json|thinking|signature)_delta")'
)
_TEXT_DELTAS = {b"response.output_text.delta": _RESPONSES_DELTAS, b"content_block_delta": _MESSAGES_DELTAS}
# The events with no text of their own: the text is in the deltas (`response.completed` repeats it in
# `response.output`, which `_event_text` does not read).
_NO_TEXT_EVENTS = frozenset(
    (
        b"response.created",
        b"response.in_progress",
        b"response.queued",
        b"response.completed",
        b"response.incomplete",
        b"response.output_item.added",
        b"response.output_item.done",
        b"response.content_part.added",
        b"response.content_part.done",
        b"response.output_text.done",
        b"response.function_call_arguments.done",
        b"message_start",
        b"content_block_start",
        b"content_block_stop",
        b"message_delta",
        b"message_stop",
        b"ping",
    )
)
_CHAT_END = (b"data: [DONE]\n\n", b"data: [DONE]\r\n\r\n")


def _common_stream_text(body: bytes) -> str | None:
    """The text of a stream of whole lines whose events all have a common shape; None otherwise."""
    if body.startswith(b'data: {"id":'):
        return _chat_stream_text(body)
    return _typed_stream_text(body)


def _chat_stream_text(body: bytes) -> str | None:
    """Chat completions: every event a chunk with choices, the last one perhaps `[DONE]`."""
    if b'"message":' in body:  # a choice's `message` would come before its delta: parse
        return None
    found = _CHAT_CHOICES.findall(body)
    texts = [text for text, other in found if not other]
    if len(texts) != len(found) or body.count(b"data:") != len(found) + body.endswith(_CHAT_END):
        return None
    return _json_text(texts)


def _typed_stream_text(body: bytes) -> str | None:
    """The Responses API and Messages: every event typed, all of one text delta's type or of none."""
    kinds = _EVENT_TYPES.findall(body)
    deltas = set(kinds) - _NO_TEXT_EVENTS
    if not deltas:
        return ""
    if len(deltas) != 1 or (kind := deltas.pop()) not in _TEXT_DELTAS:
        return None
    texts = _TEXT_DELTAS[kind].findall(body)
    return _json_text(texts) if len(texts) == kinds.count(kind) else None


def _json_text(texts: Iterable[bytes]) -> str | None:
    """The JSON strings' contents (as written, escapes and all) decoded as one string."""
    try:
        return str(orjson.loads(b'"' + b"".join(texts) + b'"'))
    except orjson.JSONDecodeError:
        return None


@dataclass
class PendingAnswer:
    """One answer on its way: its id, and what its feedback record will say."""

    recorder: FeedbackRecorder
    response_id: str
    tenant: str
    user: str | None
    persona_version: int | None
    persona_source: str
    arm: str
    model: str | None
    prompt: Any
    created: float = field(default_factory=time.time)
    kept: KeptChunks | None = None  # a stream's chunks, when its text is kept (`keep_stream`)

    def finish(self, body: bytes | None) -> None:
        """The whole answer (or None: the text is not known); the record is written in the background."""
        if self.user is not None and self.recorder.enabled:
            self.recorder.spawn(self, body)

    def keep_stream(self) -> KeptChunks | None:
        """Where the streaming answer keeps the chunks it sends, when the record keeps the text (None:
        there is no text to keep). Either way the record is queued by `ended` (the response's
        background, after its last byte): queued earlier, building and writing it would share the
        event loop with the stream it describes."""
        if self.user is not None and self.recorder.enabled and self.recorder.keep_text:
            self.kept = KeptChunks(self.recorder.stream_bytes_kept)
        return self.kept

    async def ended(self) -> None:
        """The stream was sent (or its client went away): queue its record, with the text of what was
        sent when it is kept."""
        self.finish(None if self.kept is None else b"".join(self.kept.chunks))


class KeptChunks:
    """The chunks of a streamed answer, as sent, for the text of its record: the streaming answer
    appends each one it sent while `room` (in bytes) is left; it never waits for them."""

    __slots__ = ("chunks", "room")

    def __init__(self, room: int) -> None:
        self.chunks: list[bytes] = []
        self.room = room


class FeedbackRecorder:
    """Opens pending answers and writes their records without delaying the answers."""

    def __init__(self, store: FeedbackStore, settings: Settings) -> None:
        self._store = store
        self.enabled = settings.feedback_records
        self.keep_text = settings.feedback_keep_text
        self._max_chars = settings.feedback_text_max_chars
        # a stream's text is read from its first bytes, enough for the kept characters
        self.stream_bytes_kept = settings.feedback_text_max_chars * STREAM_BYTES_PER_CHAR
        self._queue: list[tuple[PendingAnswer, bytes | None]] = []

    def open(
        self,
        tenant: str,
        user: str | None,
        *,
        persona_version: int | None,
        persona_source: str,
        arm: str,
        model: str | None,
        prompt: Any,
    ) -> PendingAnswer:
        return PendingAnswer(
            self, new_response_id(), tenant, user, persona_version, persona_source, arm, model, prompt
        )

    def spawn(self, pending: PendingAnswer, body: bytes | None) -> None:
        """Queue the answer's record; it is built and written behind the answer, with whatever else
        is waiting then, in one round trip (`store/write_behind.py`)."""
        self._queue.append((pending, body))
        self._store.write_later(self._take)

    def _take(self) -> list[Record]:
        batch, self._queue = self._queue, []
        records = []
        for pending, body in batch:
            assert pending.user is not None
            try:
                records.append(
                    (pending.tenant, pending.user, pending.response_id, self.record(pending, body))
                )
            except Exception:  # a record is never worth failing anything for
                log.exception("feedback record not built")
        return records

    def record(self, pending: PendingAnswer, body: bytes | None) -> bytes:
        record: dict[str, Any] = {
            "id": pending.response_id,
            "tenant": pending.tenant,
            "user": pending.user,
            "created": pending.created,
            "persona_version": pending.persona_version,
            "persona_source": pending.persona_source,
            "arm": pending.arm,
            "model": pending.model,
            "prompt_digest": prompt_digest(pending.prompt),
        }
        if self.keep_text:
            record["prompt"] = last_user_turn(pending.prompt)[: self._max_chars]
            if body is not None:
                record["answer"] = answer_text(body)[: self._max_chars]
        return orjson.dumps(record)

    async def drain(self) -> None:
        """Wait for the queued records to be written (shutdown, tests)."""
        await self._store.drain()
