"""The reranker hook: what a plugin provides and what it is given."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from middleware.models import Persona

if TYPE_CHECKING:
    from middleware.config import Settings
    from middleware.rerank.resources import RerankResources


@dataclass(frozen=True)
class EndUser:
    """Who the candidates are scored for. `str(user)` is the end-user id.

    `persona_version` / `persona_version_id` name the persona version the request was personalised
    with (None when the user has none or it could not be read); per-version state such as a LoRA
    adapter is looked up and cached under them. `persona` is that version itself, as injected.
    """

    tenant: str
    id: str
    persona_version: int | None = None
    persona_version_id: str | None = None
    persona: Persona | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return self.id


@runtime_checkable
class Reranker(Protocol):
    async def score(
        self, context: Sequence[dict[str, Any]], candidates: Sequence[str], *, user: EndUser | None
    ) -> list[float]:
        """One score per candidate, higher is better for this user."""


# Optional, duck-typed: `async prepare(context, *, user) -> None`. Rerank mode calls it while the
# candidates are being generated, so a reranker can encode the context or fetch per-user state ahead
# of `score` (the `lora` reranker does both). A failure there is logged and ignored.
# Also optional: `async prepare_candidate(text, *, user) -> None`, called with each candidate that
# arrives while others are still being generated (the `lora` reranker encodes it), so that `score`
# has only the last one left to do. A failure there is logged and ignored too.


# Also optional: `scoring_calls(n) -> int`, the upstream (LLM) calls `score` makes for n candidates.
# Rerank mode admits that many calls against the tenant's quotas before scoring (refused: the first
# candidate is returned, as after any scorer failure), and counts the tokens `score` reports: the
# list it returns, or the exception it raises, may carry a `usage` attribute, a dict with `calls`,
# `prompt_tokens` and `completion_tokens` (see `judge.Scores`).


# factory(settings, resources) -> Reranker, called once per process, the first time it is asked for.
RerankerFactory = Callable[["Settings", "RerankResources"], Reranker]
