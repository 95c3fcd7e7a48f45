"""Render the persona block and place it in a conversation.

Persona and exemplar text is user-derived data: it is length-capped, escaped by the template
environment so that nothing in it can close or fake the delimiting block (`middleware.prompts`), and
placed after the app's own system/developer messages so the app's instructions keep precedence.
Rationales are never injected.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from middleware.models import Message, Persona, PreferencePair
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


def inject_block(messages: list[dict[str, Any]], block: str) -> list[dict[str, Any]]:
    """Insert the block as a system message right after the app's leading instructions."""
    position = 0
    while position < len(messages) and messages[position].get("role") in _INSTRUCTION_ROLES:
        position += 1
    return [*messages[:position], {"role": "system", "content": block}, *messages[position:]]


class BlockCache:
    """Rendered blocks by persona version id: templates render once per version, not per request."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._blocks: OrderedDict[str, str] = OrderedDict()

    def get(self, version_id: str) -> str | None:
        block = self._blocks.get(version_id)
        if block is not None:
            self._blocks.move_to_end(version_id)
        return block

    def put(self, version_id: str, block: str) -> None:
        self._blocks[version_id] = block
        self._blocks.move_to_end(version_id)
        while len(self._blocks) > self._size:
            self._blocks.popitem(last=False)
