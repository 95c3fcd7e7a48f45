"""Step 2, bootstrap reasoning: ask the LLM why the user chose as they did; keep confirmed traces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from middleware.induction.context import LLMContext, Progress, ab_values, chosen_first, report, run_all
from middleware.models import PreferencePair
from middleware.personalize.block import clip

RATIONALE_MAX_CHARS = 1000


class BootstrapAnswer(BaseModel):
    reasoning: str = Field(description="step-by-step reasoning about the person's choice")
    speculations: list[str] = Field(max_length=3, description="1-3 guesses about the person")
    preferred: Literal["A", "B"]


@dataclass
class Trace:
    pair: PreferencePair
    chosen_label: Literal["A", "B"]
    predicted: Literal["A", "B"]
    reasoning: str
    speculations: list[str] = field(default_factory=list)

    @property
    def kept(self) -> bool:
        return self.predicted == self.chosen_label


async def bootstrap_one(ctx: LLMContext, pair: PreferencePair, seed: int) -> Trace:
    chosen_is_a = chosen_first(pair, seed, "bootstrap")
    values = ab_values(pair, chosen_is_a)
    values["rationale"] = clip(pair.rationale, RATIONALE_MAX_CHARS) if pair.rationale else ""
    answer = await ctx.call("induction_bootstrap", values, BootstrapAnswer)
    return Trace(
        pair=pair,
        chosen_label="A" if chosen_is_a else "B",
        predicted=answer.preferred,
        reasoning=answer.reasoning,
        speculations=[s for s in answer.speculations if s.strip()][:3],
    )


async def bootstrap(
    ctx: LLMContext, pairs: list[PreferencePair], *, seed: int, progress: Progress | None = None
) -> list[Trace]:
    """One trace per pair (in the pairs' order); a trace is `kept` when it predicted the real choice."""
    done = 0

    async def run(pair: PreferencePair) -> Trace:
        nonlocal done
        trace = await bootstrap_one(ctx, pair, seed)
        done += 1
        await report(progress, stage="bootstrap", done=done, total=len(pairs))
        return trace

    return await run_all([run(p) for p in pairs])
