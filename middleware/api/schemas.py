"""Request and response bodies of the JSON API (input and output models kept apart)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from middleware.models import Message, Persona, PreferencePair


class ExemplarIn(BaseModel):
    """A preference pair given by an operator; the user comes from the URL."""

    model_config = ConfigDict(extra="forbid")

    context: list[Message] = Field(min_length=1)
    chosen: Message
    rejected: Message
    rationale: str | None = None

    def to_pair(self, user: str) -> PreferencePair:
        return PreferencePair(user_id=user, **self.model_dump())


class PersonaPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=20_000)
    exemplars: list[ExemplarIn] = Field(default_factory=list, max_length=50)
    context: str | None = Field(
        default=None, max_length=64, description="store it as this context's persona (used for the tag)"
    )


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    context: str | None = Field(
        default=None, max_length=64, description="roll back this context's persona line instead"
    )


class ContextPersonaPublic(BaseModel):
    """The current persona of one of the user's contexts (README "Contexts")."""

    context: str
    text: str
    version: int
    version_id: str
    exemplars: list[dict[str, Any]]
    provenance: dict[str, Any]
    created_at: str
    routed: bool = Field(description="the router has a centroid for it (untagged calls can reach it)")

    @classmethod
    def of(cls, context: str, persona: Persona, *, routed: bool) -> ContextPersonaPublic:
        return cls(
            context=context,
            text=persona.text,
            version=persona.version,
            version_id=persona.version_id,
            exemplars=[e.model_dump(mode="json", exclude_none=True) for e in persona.exemplars],
            provenance=persona.provenance,
            created_at=persona.created_at,
            routed=routed,
        )


class PersonaPublic(BaseModel):
    user: str
    text: str
    version: int
    version_id: str
    exemplars: list[dict[str, Any]]
    provenance: dict[str, Any]
    created_at: str
    contexts: list[ContextPersonaPublic] = Field(
        default_factory=list, description="the current persona of each of the user's contexts"
    )

    @classmethod
    def of(
        cls, user: str, persona: Persona, contexts: list[ContextPersonaPublic] | None = None
    ) -> PersonaPublic:
        return cls(
            user=user,
            text=persona.text,
            version=persona.version,
            version_id=persona.version_id,
            exemplars=[e.model_dump(mode="json", exclude_none=True) for e in persona.exemplars],
            provenance=persona.provenance,
            created_at=persona.created_at,
            contexts=contexts or [],
        )


class AdapterPublic(BaseModel):
    """The `lora` adapter stored beside a persona version (trained by the worker after a refresh)."""

    bytes: int
    head_id: str | None = Field(None, description="the global reward head the adapter was trained on")
    strength: str | None = Field(None, description='anchor strength chosen by cross-validation, or "off"')
    n_pairs: int | None = Field(None, description="preference pairs it was trained on")
    n_implicit: int | None = Field(
        None, description="of them, pairs implied by feedback signals (weighted less, README Feedback)"
    )
    trained_at: str | None = None
    train_seconds: float | None = None
    persona_version_id: str | None = None


class PersonaVersionPublic(BaseModel):
    context: str | None = Field(
        default=None, description="the context's line this version is on; null: general"
    )
    version: int
    version_id: str
    created_at: str
    current: bool
    text_chars: int
    exemplar_count: int
    provenance: dict[str, Any]
    adapter: AdapterPublic | None = Field(None, description="the lora adapter of this version, if any")


class AdapterOfVersion(AdapterPublic):
    user: str
    persona_version: int
