"""client.comparisons: four-way comparisons and their judgements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from middleware.sdk._common import NO_RETRY, PersonaClient, compact, require_user
from middleware.sdk.types import Comparison, Judgement

# A judgement is not retried by the client: a 409 means it was already recorded.


def _create_body(
    client: PersonaClient,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    user: str | None,
    variants: Sequence[Mapping[str, Any]] | None,
    session_id: str | None,
    persona: bool,
    max_tokens: int | None,
) -> dict[str, Any]:
    return compact(
        {
            "user": require_user(client, user),
            "model": model,
            "messages": [dict(m) for m in messages],
            "variants": [dict(v) for v in variants] if variants is not None else None,
            "session_id": session_id,
            "persona": persona,
            "max_tokens": max_tokens,
        }
    )


class Comparisons:
    def __init__(self, client: Any) -> None:
        self._client = client

    def create(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        user: str | None = None,
        variants: Sequence[Mapping[str, Any]] | None = None,
        session_id: str | None = None,
        persona: bool = True,
        max_tokens: int | None = None,
    ) -> Comparison:
        body = _create_body(self._client, model, messages, user, variants, session_id, persona, max_tokens)
        response = self._client.post("/comparisons", body=body, cast_to=httpx.Response)
        return Comparison.model_validate(response.json())

    def judge(self, comparison_id: str, *, best: int, worst: int, rationale: str = "") -> Judgement:
        response = self._client.post(
            f"/comparisons/{comparison_id}/judgement",
            body={"best": best, "worst": worst, "rationale": rationale},
            cast_to=httpx.Response,
            options=NO_RETRY,
        )
        return Judgement.model_validate(response.json())


class AsyncComparisons:
    def __init__(self, client: Any) -> None:
        self._client = client

    async def create(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        user: str | None = None,
        variants: Sequence[Mapping[str, Any]] | None = None,
        session_id: str | None = None,
        persona: bool = True,
        max_tokens: int | None = None,
    ) -> Comparison:
        body = _create_body(self._client, model, messages, user, variants, session_id, persona, max_tokens)
        response = await self._client.post("/comparisons", body=body, cast_to=httpx.Response)
        return Comparison.model_validate(response.json())

    async def judge(self, comparison_id: str, *, best: int, worst: int, rationale: str = "") -> Judgement:
        response = await self._client.post(
            f"/comparisons/{comparison_id}/judgement",
            body={"best": best, "worst": worst, "rationale": rationale},
            cast_to=httpx.Response,
            options=NO_RETRY,
        )
        return Judgement.model_validate(response.json())
