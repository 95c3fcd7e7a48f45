"""The variants a candidate is generated in (docs/METHOD.md §1).

A `Variant` says where the app's instructions go (kept as the app sent them, or moved into assistant
messages) and the sampling temperature. A `Plan` is one candidate to generate: a variant (or none:
the app's layout and sampling, unchanged) and the persona block it carries (or none). Where the block
goes is decided by `personalize.block.place_persona`, the same placement as in a plain chat call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from middleware.personalize.block import place_persona

InstructionRole = Literal["system", "assistant"]


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    instruction_role: InstructionRole = "system"
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)


DEFAULT_VARIANTS: tuple[Variant, ...] = (
    Variant(instruction_role="system", temperature=1.0),
    Variant(instruction_role="system", temperature=0.1),
    Variant(instruction_role="assistant", temperature=1.0),
    Variant(instruction_role="assistant", temperature=0.1),
)


@dataclass(frozen=True)
class Plan:
    """One candidate to generate: its variant (None: as the app sent it) and its persona block."""

    variant: Variant | None = None
    block: str | None = None

    def messages(self, conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The conversation as this candidate sends it upstream."""
        moved = self.variant is not None and self.variant.instruction_role == "assistant"
        return place_persona(conversation, self.block, instructions_as="assistant" if moved else None)


def plans(variants: Sequence[Variant], block: str | None) -> list[Plan]:
    """Every variant, each carrying the same persona block."""
    return [Plan(variant, block) for variant in variants]
