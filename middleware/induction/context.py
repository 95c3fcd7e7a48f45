"""What every induction step needs to call the LLM, and how pairs are shown to it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from middleware.llm import CallBudget, Usage, structured_call
from middleware.models import Message, PreferencePair, message_text
from middleware.personalize.block import clip
from middleware.prompts import render
from middleware.upstream import UpstreamRouter

PROMPT_VERSION = "induction/2"
# The app's own instructions are not the user's preferences: induction never sees them.
SHOWN_ROLES = ("user", "assistant")
TURN_MAX_CHARS = 2000
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Progress = Callable[[dict[str, Any]], Awaitable[None] | None]


@dataclass
class LLMContext:
    upstreams: UpstreamRouter
    model: str
    budget: CallBudget
    concurrency: int = 4
    max_attempts: int = 3
    max_completion_tokens: int = 800
    usage: Usage = field(default_factory=Usage)
    semaphore: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.semaphore = asyncio.Semaphore(max(1, self.concurrency))

    async def call(self, template: str, values: dict[str, Any], schema: type[M]) -> M:
        """Render `<template>_system.j2` and `<template>_user.j2` and make one structured call."""
        messages = [
            {"role": "system", "content": render(f"{template}_system.j2", **values)},
            {"role": "user", "content": render(f"{template}_user.j2", **values)},
        ]
        parsed, usage = await structured_call(
            self.upstreams,
            self.model,
            messages,
            schema,
            budget=self.budget,
            max_attempts=self.max_attempts,
            max_completion_tokens=self.max_completion_tokens,
            semaphore=self.semaphore,
        )
        self.usage.add(usage)
        return parsed


def conversation_view(context: list[Message]) -> list[dict[str, str]]:
    """The user/assistant turns of a conversation as short plain text (system prompts left out)."""
    return [
        {"role": m.role, "text": clip(message_text(m), TURN_MAX_CHARS)}
        for m in context
        if m.role in SHOWN_ROLES
    ]


def request_text(pair: PreferencePair) -> str:
    users = [m for m in pair.context if m.role == "user"]
    return clip(message_text(users[-1]), TURN_MAX_CHARS) if users else ""


def chosen_first(pair: PreferencePair, seed: int, salt: str = "") -> bool:
    """A seeded, per-pair coin: is the chosen answer shown as A?"""
    digest = hashlib.sha256(f"{seed}:{salt}:{pair.stable_id()}".encode()).digest()
    return digest[0] % 2 == 0


def ab_values(pair: PreferencePair, chosen_is_a: bool) -> dict[str, Any]:
    chosen = clip(message_text(pair.chosen), TURN_MAX_CHARS)
    rejected = clip(message_text(pair.rejected), TURN_MAX_CHARS)
    return {
        "conversation": conversation_view(pair.context),
        "completion_a": chosen if chosen_is_a else rejected,
        "completion_b": rejected if chosen_is_a else chosen,
    }


async def run_all(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and raise that failure itself.

    Not a TaskGroup: before Python 3.11.3 (Debian 12 ships 3.11.2) a TaskGroup whose child failed
    could leave its own cancellation of the calling task pending, to strike that task's next await
    after the group had ended (the caller's next Redis read)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # the rest have stopped when this returns
        raise


async def report(progress: Progress | None, **event: Any) -> None:
    if progress is None:
        return
    result = progress(event)
    if result is not None:
        await result
