"""Pairwise feedback from apps -> records in each user's preference log.

A record id is derived from the idempotency key when one is given, else from the content
(`PreferencePair.stable_id`), so a retried call never stores a judgement twice. Each user's records
go in one atomic write; writes fail closed (503) when Redis is unavailable.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from middleware.errors import ValidationFailed
from middleware.models import Message, PreferencePair
from middleware.personalize.contexts import valid_tag
from middleware.store.preferences import PreferenceStore

SOURCE = "feedback"


class FeedbackMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    context: str | None = Field(
        default=None, description='the context the judgement was made in (README "Contexts")'
    )


class FeedbackIn(BaseModel):
    """One piece of pairwise feedback: in `context` the user preferred `chosen` over `rejected`."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(default=None, description="end-user id (or the X-Persona-User header)")
    context: list[Message] = Field(min_length=1, max_length=500)
    chosen: Message
    rejected: Message
    rationale: str | None = Field(default=None, max_length=20_000)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    timestamp: str | None = Field(default=None, max_length=64)
    item_id: str | None = Field(default=None, max_length=256)
    metadata: FeedbackMetadata | None = None


def record_id(pair: PreferencePair, idempotency_key: str | None) -> str:
    if idempotency_key:
        return "key_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return pair.stable_id()


def to_record(
    item: FeedbackIn, user: str, idempotency_key: str | None, context_tag: str | None = None
) -> tuple[str, str, dict[str, Any]]:
    """`context_tag` (the request's `X-Persona-Context`) applies when the item names no context."""
    if item.chosen.model_dump() == item.rejected.model_dump():
        raise ValidationFailed("'chosen' and 'rejected' are the same message", param="rejected")
    tag = (item.metadata.context if item.metadata else None) or context_tag
    if tag is not None and not valid_tag(tag):
        raise ValidationFailed(
            "a context tag is 1-64 letters, digits, '.', '_' or '-' (and not 'general')",
            param="metadata.context",
        )
    pair = PreferencePair(
        user_id=user,
        context=item.context,
        chosen=item.chosen,
        rejected=item.rejected,
        rationale=item.rationale,
        timestamp=item.timestamp or datetime.now(UTC).isoformat(),
        source=SOURCE,
        item_id=item.item_id,
        context_tag=tag,
    )
    pid = record_id(pair, idempotency_key)
    return pid, "pair", pair.model_copy(update={"id": pid}).model_dump(mode="json")


async def add_feedback(
    store: PreferenceStore, tenant: str, items: Sequence[tuple[str, str, dict[str, Any]]]
) -> list[bool]:
    """Write (user, id, data) items: one atomic write per user, users in parallel. Flags in order."""
    by_user: dict[str, list[int]] = {}
    for position, (user, _, _) in enumerate(items):
        by_user.setdefault(user, []).append(position)

    async def write(user: str, positions: list[int]) -> list[bool]:
        return await store.add(tenant, user, [(items[p][1], "pair", items[p][2]) for p in positions])

    results = await asyncio.gather(*(write(u, ps) for u, ps in by_user.items()))
    flags = [False] * len(items)
    for positions, user_flags in zip(by_user.values(), results, strict=True):
        for position, flag in zip(positions, user_flags, strict=True):
            flags[position] = flag
    return flags
