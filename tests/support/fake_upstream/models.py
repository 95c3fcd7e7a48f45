"""What a test scripts (Reply) and what the fake saw (RecordedRequest)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

MODELS = ("fake-model", "fake-model-large", "fake-judge")


@dataclass
class Reply:
    """One scripted upstream answer for ``POST /v1/chat/completions``."""

    content: str | None = None
    json: dict[str, Any] | list[Any] | None = None
    # each {"name": str, "arguments": "<json string>" (a dict is json-dumped)}
    tool_calls: list[dict[str, Any]] | None = None
    status: int = 200
    error_message: str | None = None
    error_type: str | None = None
    delay: float = 0.0  # seconds before the response headers
    chunk_delay: float = 0.0  # seconds between stream chunks
    fail_mid_stream: bool = False  # send some of the body, then drop the connection
    finish_reason: str | None = None
    headers: dict[str, str] | None = None  # extra response headers, e.g. {"retry-after": "0"}
    # a Response object (Responses API) indented, every non-ASCII character a \u escape, as Python's
    # json.dumps writes it, instead of orjson's compact bytes
    indented: bool = False


Responder = Callable[[dict[str, Any]], "Reply | str | dict[str, Any] | Awaitable[Any] | None"]


@dataclass
class RecordedRequest:
    path: str
    method: str
    headers: dict[str, str]
    body: Any
    received_at: float
    query: str = ""
    aborted: bool = False
    aborted_at: float | None = None
    completed: bool = False
    status: int | None = None
    raw_body: bytes = field(default=b"", repr=False)

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return messages if isinstance(messages, list) else []
