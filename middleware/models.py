"""Data shapes shared across the package: chat messages, preference pairs, personas."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "developer", "user", "assistant", "tool"]


class Message(BaseModel):
    """One chat message. Extra OpenAI fields (name, tool_calls, ...) are kept."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: Any = None


class PreferencePair(BaseModel):
    """One preference judgement: in `context`, the user preferred `chosen` over `rejected`.

    Same shape as a PersonalRewardBench row plus `rationale` (see ../shared/data/README.md).
    """

    model_config = ConfigDict(extra="ignore")

    user_id: str
    context: list[Message]
    chosen: Message
    rejected: Message
    rationale: str | None = None
    timestamp: str | None = None
    source: str | None = None
    item_id: str | None = None
    # The context the judgement was made in (the app's tag; README "Contexts"); None: untagged.
    context_tag: str | None = None
    # How much the pair counts in induction and training (None: 1, an explicit judgement); pairs
    # implied by feedback signals (`source: implicit`) weigh less.
    weight: float | None = None
    id: str | None = Field(default=None, description="stable id; derived from content when absent")

    @property
    def pair_weight(self) -> float:
        """How much the pair counts (1 unless it says otherwise)."""
        return 1.0 if self.weight is None else float(self.weight)

    def stable_id(self) -> str:
        """An id that is the same every time the same judgement is imported (idempotent imports)."""
        if self.id:
            return self.id
        payload = orjson.dumps(
            [
                self.user_id,
                [m.model_dump(mode="json") for m in self.context],
                self.chosen.model_dump(mode="json"),
                self.rejected.model_dump(mode="json"),
                self.item_id,
            ],
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(payload).hexdigest()[:32]


class Persona(BaseModel):
    """One stored persona version: plain text plus the exemplar pairs injected with it.

    The version fields come first, so a stored blob names its version in its first bytes (the chat
    path reads them without decoding the rest, `middleware.personalize.service`)."""

    version: int
    version_id: str
    text: str
    exemplars: list[PreferencePair] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)
    created_at: str


def message_text(message: Message | dict[str, Any]) -> str:
    """The plain text of a message whose content may be a string or a list of parts."""
    content = message.content if isinstance(message, Message) else message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and "text" in part
        )
    return ""
