"""Step 3: a concise plain-text persona from the confirmed reasoning traces."""

from __future__ import annotations

import re

from pydantic import BaseModel

from middleware.errors import LLMOutputError
from middleware.induction.bootstrap import Trace
from middleware.induction.context import LLMContext, request_text
from middleware.personalize.block import clip

_TAG_RE = re.compile(r"<\s*/?\s*[A-Za-z_!?][^<>]*>")
_SPACE_RE = re.compile(r"[ \t]+")


class PersonaDraft(BaseModel):
    persona: str


def clean_persona(text: str, max_chars: int) -> str:
    """Plain text only: no markup tags (nothing can fake or close a delimiting block), capped."""
    text = _TAG_RE.sub("", text)
    text = "\n".join(_SPACE_RE.sub(" ", line).strip() for line in text.strip().splitlines())
    text = re.sub(r"\n{3,}", "\n\n", text)
    return clip(text, max_chars)


async def synthesize(ctx: LLMContext, traces: list[Trace], *, max_chars: int) -> str:
    values = {
        "max_chars": max_chars,
        "traces": [
            {
                "request": clip(request_text(t.pair), 300),
                "reasoning": clip(t.reasoning, 1500),
                "speculations": [clip(s, 300) for s in t.speculations],
            }
            for t in traces
        ],
    }
    draft = await ctx.call("induction_synthesize", values, PersonaDraft)
    persona = clean_persona(draft.persona, max_chars)
    if not persona:
        raise LLMOutputError(f"{ctx.model} returned an empty persona")
    return persona
