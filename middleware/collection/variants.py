"""The candidate variants of a four-way comparison (docs/METHOD.md §1).

The app's instruction is the leading system message of the conversation, if any. A variant says
where that instruction goes (kept as a system message, or moved to an assistant message placed
first) and the sampling temperature.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


def split_instruction(messages: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the leading system message or None, the rest of the conversation)."""
    if messages and messages[0].get("role") == "system":
        return messages[0], messages[1:]
    return None, messages


def apply_variant(messages: list[dict[str, Any]], variant: Variant) -> list[dict[str, Any]]:
    """The conversation as this variant sends it upstream."""
    instruction, rest = split_instruction(messages)
    if instruction is None:
        return list(rest)
    moved = {**instruction, "role": variant.instruction_role}
    return [moved, *rest]
