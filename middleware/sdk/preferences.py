"""client.preferences: pairwise feedback (one, or a batch with items=[...])."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from middleware.sdk._common import Content, Message, preference_items
from middleware.sdk.types import PreferenceResult


class Preferences:
    def __init__(self, client: Any) -> None:
        self._client = client

    def add(
        self,
        *,
        context: str | Sequence[Message] | None = None,
        chosen: Content | None = None,
        rejected: Content | None = None,
        rationale: str | None = None,
        idempotency_key: str | None = None,
        user: str | None = None,
        items: Sequence[Mapping[str, Any]] | None = None,
    ) -> PreferenceResult:
        body = preference_items(
            user=user or self._client.persona_user,
            context=context,
            chosen=chosen,
            rejected=rejected,
            rationale=rationale,
            idempotency_key=idempotency_key,
            items=items,
        )
        response = self._client.post("/preferences", body=body, cast_to=httpx.Response)
        return PreferenceResult.model_validate(response.json())


class AsyncPreferences:
    def __init__(self, client: Any) -> None:
        self._client = client

    async def add(
        self,
        *,
        context: str | Sequence[Message] | None = None,
        chosen: Content | None = None,
        rejected: Content | None = None,
        rationale: str | None = None,
        idempotency_key: str | None = None,
        user: str | None = None,
        items: Sequence[Mapping[str, Any]] | None = None,
    ) -> PreferenceResult:
        body = preference_items(
            user=user or self._client.persona_user,
            context=context,
            chosen=chosen,
            rejected=rejected,
            rationale=rationale,
            idempotency_key=idempotency_key,
            items=items,
        )
        response = await self._client.post("/preferences", body=body, cast_to=httpx.Response)
        return PreferenceResult.model_validate(response.json())
