"""client.feedback: signals about answers (their `x-persona-response-id`), one or a batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from middleware.sdk._common import compact
from middleware.sdk.types import FeedbackResult


def _signals(
    response_id: str | None,
    signal: str | None,
    value: float | None,
    text: str | None,
    idempotency_key: str | None,
    items: Sequence[Mapping[str, Any]] | None,
) -> list[dict[str, Any]]:
    if items is not None:
        if response_id is not None or signal is not None:
            raise ValueError("give either response_id and signal, or items")
        return [dict(item) for item in items]
    if response_id is None or signal is None:
        raise ValueError("response_id and signal are required (or items=[...])")
    one = {"response_id": response_id, "signal": signal, "value": value, "text": text}
    return [compact({**one, "idempotency_key": idempotency_key})]  # the fields not given left out


class Feedback:
    def __init__(self, client: Any) -> None:
        self._client = client

    def send(
        self,
        response_id: str | None = None,
        signal: str | None = None,
        *,
        value: float | None = None,
        text: str | None = None,
        idempotency_key: str | None = None,
        items: Sequence[Mapping[str, Any]] | None = None,
    ) -> FeedbackResult:
        """One signal (`thumbs_up`, `thumbs_down`, `regenerate`, `copy`, `edit`, `follow_up`, `dwell`)
        about one answer, or a batch with items=[{"response_id", "signal", ...}]."""
        body = _signals(response_id, signal, value, text, idempotency_key, items)
        response = self._client.post("/feedback", body=body, cast_to=httpx.Response)
        return FeedbackResult.model_validate(response.json())


class AsyncFeedback:
    def __init__(self, client: Any) -> None:
        self._client = client

    async def send(
        self,
        response_id: str | None = None,
        signal: str | None = None,
        *,
        value: float | None = None,
        text: str | None = None,
        idempotency_key: str | None = None,
        items: Sequence[Mapping[str, Any]] | None = None,
    ) -> FeedbackResult:
        body = _signals(response_id, signal, value, text, idempotency_key, items)
        response = await self._client.post("/feedback", body=body, cast_to=httpx.Response)
        return FeedbackResult.model_validate(response.json())
