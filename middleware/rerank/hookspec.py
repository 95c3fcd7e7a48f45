"""The reranker hook: what a plugin provides and what it is given."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class EndUser:
    """Who the candidates are scored for. `str(user)` is the end-user id."""

    tenant: str
    id: str

    def __str__(self) -> str:
        return self.id


@runtime_checkable
class Reranker(Protocol):
    async def score(
        self, context: Sequence[dict[str, Any]], candidates: Sequence[str], *, user: EndUser | None
    ) -> list[float]:
        """One score per candidate, higher is better for this user."""


# factory(settings, resources) -> Reranker; resources is a `middleware.rerank.resources.RerankResources`.
RerankerFactory = Callable[[Any, Any], Reranker]
