"""Addressable answers: every answer gets an id (`x-persona-response-id`) and, when it has an end user,
a feedback record written off the hot path.

The route opens a `PendingAnswer` before the upstream call; the answer layer hands it the body (or
lets a stream pass through `PendingAnswer.watch`, which only keeps references to the chunks). The
record is then written behind the answer, in the round trip that carries the other writes after
answers (`store/write_behind.py`): building it (prompt digest, texts) happens there too, so the
answer never waits for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from middleware.config import Settings
from middleware.models import message_text
from middleware.store.feedback import FeedbackStore, Record

log = logging.getLogger("middleware.feedback")

RESPONSE_ID_HEADER = "x-persona-response-id"
ID_PREFIX = "pmr_"


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

    def finish(self, body: bytes | None) -> None:
        """The whole answer (or None: the text is not known); the record is written in the background."""
        if self.user is not None and self.recorder.enabled:
            self.recorder.spawn(self, body)

    def watch(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass a stream through unchanged; its chunks are kept (when the text is kept) for the record
        written once the stream ends. Without the text, the record waits for `ended` (the response's
        background, after its last byte): queued at the start, its write would share the event loop
        with the stream it describes."""
        if self.user is None or not self.recorder.enabled or not self.recorder.keep_text:
            return stream
        return self._watched(stream)

    async def ended(self) -> None:
        """The watched stream was sent (or its client went away): write the record if `watch` kept
        no text to write it with."""
        if not self.recorder.keep_text:
            self.finish(None)

    async def _watched(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        chunks: list[bytes] = []
        try:
            async for chunk in stream:
                chunks.append(chunk)
                yield chunk
        finally:
            self.recorder.spawn(self, b"".join(chunks))


class FeedbackRecorder:
    """Opens pending answers and writes their records without delaying the answers."""

    def __init__(self, store: FeedbackStore, settings: Settings) -> None:
        self._store = store
        self.enabled = settings.feedback_records
        self.keep_text = settings.feedback_keep_text
        self._max_chars = settings.feedback_text_max_chars
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
