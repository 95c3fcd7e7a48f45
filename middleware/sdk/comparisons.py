"""client.comparisons: four-way comparisons and their judgements."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from middleware.sdk._common import NO_RETRY, PersonaClient, compact, require_user
from middleware.sdk.types import Comparison, Judgement

# A judgement is not retried by the client: a 409 means it was already recorded. A creation carries an
# idempotency key (the caller's, else a fresh one), so the client's own retries after a timeout or a
# 503 find the comparison a first attempt stored instead of creating a second one.


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


def _key_options(idempotency_key: str | None) -> dict[str, Any]:
    return {"headers": {"Idempotency-Key": idempotency_key or f"sdk-{uuid.uuid4().hex}"}}


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
        idempotency_key: str | None = None,
    ) -> Comparison:
        body = _create_body(self._client, model, messages, user, variants, session_id, persona, max_tokens)
        options = _key_options(idempotency_key)
        response = self._client.post("/comparisons", body=body, cast_to=httpx.Response, options=options)
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
        idempotency_key: str | None = None,
    ) -> Comparison:
        body = _create_body(self._client, model, messages, user, variants, session_id, persona, max_tokens)
        options = _key_options(idempotency_key)
        response = await self._client.post("/comparisons", body=body, cast_to=httpx.Response, options=options)
        return Comparison.model_validate(response.json())

    async def judge(self, comparison_id: str, *, best: int, worst: int, rationale: str = "") -> Judgement:
        response = await self._client.post(
            f"/comparisons/{comparison_id}/judgement",
            body={"best": best, "worst": worst, "rationale": rationale},
            cast_to=httpx.Response,
            options=NO_RETRY,
        )
        return Judgement.model_validate(response.json())
