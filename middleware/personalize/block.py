"""Render the persona block and place it in a conversation.

Persona and exemplar text is user-derived data: it is length-capped, escaped by the template
environment so that nothing in it can close or fake the delimiting block (`middleware.prompts`), and
placed after the app's own system/developer messages so the app's instructions keep precedence.
Rationales are never injected.
"""

from __future__ import annotations

from typing import Any

from middleware.models import Persona, PreferencePair, message_text
from middleware.prompts import escaped_length, render

TEMPLATE = "persona_block.j2"
_INSTRUCTION_ROLES = ("system", "developer")


def clip(text: str, limit: int) -> str:
    """`text` cut so that, once escaped for a prompt, it is at most `limit` characters long."""
    text = text.strip()
    if escaped_length(text) <= limit:
        return text
    low, high = 0, min(len(text), max(0, limit - 1))  # the longest prefix that fits, plus "…"
    while low < high:
        middle = (low + high + 1) // 2
        if escaped_length(text[:middle]) <= limit - 1:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip() + "…"


def exemplar_view(pair: PreferencePair, max_chars: int) -> dict[str, str]:
    """What a prompt shows of an exemplar: the last request, the chosen and the rejected answer."""
    users = [m for m in pair.context if m.role == "user"]
    return {
        "request": clip(message_text(users[-1]) if users else "", max_chars),
        "chosen": clip(message_text(pair.chosen), max_chars),
        "rejected": clip(message_text(pair.rejected), max_chars),
    }


def render_persona_block(
    persona: Persona, *, max_chars: int, exemplars_max: int, exemplar_max_chars: int
) -> str:
    exemplars = [exemplar_view(pair, exemplar_max_chars) for pair in persona.exemplars[:exemplars_max]]
    return render(TEMPLATE, persona_text=clip(persona.text, max_chars), exemplars=exemplars)


def split_instructions(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the app's instructions, the rest): the instructions are the conversation's leading system and
    developer messages. This is the one definition every flow uses."""
    position = 0
    while position < len(messages) and messages[position].get("role") in _INSTRUCTION_ROLES:
        position += 1
    return list(messages[:position]), list(messages[position:])


def place_persona(
    messages: list[dict[str, Any]], block: str | None, *, instructions_as: str | None = None
) -> list[dict[str, Any]]:
    """The conversation as sent upstream, for every flow (chat, comparisons, rerank, evaluations).

    The app's instructions come first: as the app sent them, or each re-roled to `instructions_as`
    when a candidate variant moves them (e.g. to "assistant"). The persona block follows them as a
    system message of its own, so the app's instructions keep precedence and the block is never sent
    under another role, whatever the variant and whether or not the app sent instructions.
    """
    instructions, rest = split_instructions(messages)
    if instructions_as is not None:
        instructions = [{**message, "role": instructions_as} for message in instructions]
    persona = [{"role": "system", "content": block}] if block is not None else []
    return [*instructions, *persona, *rest]
