"""Typed answers of the proxy's own routes (unknown fields are kept, so newer servers still parse)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Candidate(_Model):
    index: int
    variant: dict[str, Any] = Field(default_factory=dict)
    content: str | None = None
    error: dict[str, Any] | None = None
    latency_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.content is not None


class Comparison(_Model):
    id: str
    user: str
    model: str
    session_id: str | None = None
    persona_version: int | None = None
    created: int | None = None
    expires_at: int | None = None
    candidates: list[Candidate]


class Judgement(_Model):
    id: str
    user: str
    best: int
    worst: int
    pairs_added: int
    session_id: str | None = None
    session_appended: bool = False
    records: list[dict[str, Any]] = Field(default_factory=list)


class PreferenceResult(_Model):
    created: int
    duplicates: int
    data: list[dict[str, Any]]


class FeedbackResult(_Model):
    """What POST /v1/feedback stored: per signal its id, whether it was new, the answer's reward."""

    created: int
    data: list[dict[str, Any]]

    @property
    def reward(self) -> float | None:
        """The reward of the (last) answer the signals were about."""
        return self.data[-1].get("reward") if self.data else None


class Persona(_Model):
    user: str
    text: str
    version: int
    version_id: str
    exemplars: list[dict[str, Any]] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)
    created_at: str | None = None


class PersonaVersion(_Model):
    version: int
    version_id: str | None = None
    created_at: str | None = None
    current: bool = False


class RefreshJob(_Model):
    job_id: str
