"""The `lora` reranker as the proxy uses it: the async hook object, its factory and registration.

Adapters are fetched from the store on first use and cached under
`(tenant, user, persona version, persona version id)`, so a new version, a rollback or a forgotten
and re-created user never gets an adapter trained for another persona version. A user without an
adapter (none trained yet, or one of an older head) is scored by the global head.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from middleware.models import Message
from middleware.rerank.hookspec import EndUser
from middleware.rerank.lora.base import AdapterMismatch
from middleware.rerank.lora.model import LoraRewardModel

if TYPE_CHECKING:
    from middleware.config import Settings
    from middleware.rerank.registry import RerankerRegistry
    from middleware.rerank.resources import RerankResources

log = logging.getLogger("middleware.rerank.lora")
HEAD_CHECK_S = 10.0  # how often the head file is checked for a newer one


def model_from_settings(settings: Any, **overrides: Any) -> LoraRewardModel:
    """A model configured by the `lora_*` settings, with the global head loaded if the file exists."""
    options: dict[str, Any] = {
        "encoder_path": getattr(settings, "lora_encoder_path", None),
        "cache_size": int(getattr(settings, "lora_cache_size", 256) or 256),
        "device": getattr(settings, "lora_device", None),
        "num_threads": getattr(settings, "lora_threads", None),
        "context_max_length": getattr(settings, "lora_max_context_tokens", None),
        "quantize": getattr(settings, "lora_quantize", "off"),
    }
    options.update(overrides)
    model = LoraRewardModel(**options)
    head_path = getattr(settings, "lora_head_path", None)
    if head_path and Path(head_path).exists():
        model.load(head_path)
    return model


def adapter_key(user: EndUser | str | None) -> Hashable | None:
    if isinstance(user, EndUser):
        return (user.tenant, user.id, user.persona_version, user.persona_version_id)
    return user


class LoraReranker:
    """The async hook object: `await score(context, candidates, user=...)` -> one reward per candidate.

    When a `store` is given and a user's adapter is not cached, the reranker asks the store for it
    with `await store.get_lora_adapter(user)` (bytes or None) — a duck-typed hook, skipped when the
    store has no such method. `prepare` (called by rerank mode while candidates are generated)
    encodes the context and fetches the adapter ahead of scoring.
    """

    name = "lora"

    def __init__(self, model: LoraRewardModel, store: Any = None, head_path: str | None = None) -> None:
        self.model = model
        self.store = store
        self.head_path = head_path
        self._head_mtime = _mtime(head_path)
        self._head_checked = time.monotonic()

    async def _maybe_reload_head(self) -> None:
        """Pick up a head retrained by `persona train-reward-head` (checked every HEAD_CHECK_S)."""
        if not self.head_path or time.monotonic() - self._head_checked < HEAD_CHECK_S:
            return
        self._head_checked = time.monotonic()
        mtime = _mtime(self.head_path)
        if mtime is not None and mtime != self._head_mtime:
            try:
                await asyncio.to_thread(self.model.load, self.head_path)  # torch work: off the loop
                self._head_mtime = mtime
                log.info("lora reranker: loaded global head %s", self.model.head_id)
            except Exception as exc:
                log.warning("lora reranker: could not load head %s: %s", self.head_path, exc)

    async def _ensure_adapter(self, user: EndUser | str | None) -> None:
        key = adapter_key(user)
        if user is None or key is None or self.model.has_user(key) or self.store is None:
            return
        if self.model.head_id is None:
            return
        getter = getattr(self.store, "get_lora_adapter", None)
        if getter is None:
            return
        blob = await getter(user)
        if not blob:
            return
        try:
            meta = await asyncio.to_thread(self.model.load_user, key, blob)
        except AdapterMismatch as exc:
            log.info("lora reranker: stored adapter not used (%s); scoring with the global head", exc)
            return
        expected = user.persona_version_id if isinstance(user, EndUser) else None
        found = meta.get("persona_version_id")
        if expected and found and found != expected:  # belt and braces: never another version's
            self.model.forget(lambda k: k == key)

    async def prepare(
        self, context: Sequence[Message | dict[str, Any]], *, user: EndUser | str | None
    ) -> None:
        await self._maybe_reload_head()
        await asyncio.gather(
            self._ensure_adapter(user), asyncio.to_thread(self.model.prepare_context, context)
        )

    async def prepare_candidate(self, text: str, *, user: EndUser | str | None) -> None:
        """Encode a candidate that arrived early (the encoder caches it for `score`)."""
        await asyncio.to_thread(self.model.encoder.encode, [text])

    async def score(
        self,
        context: Sequence[Message | dict[str, Any]],
        candidates: Sequence[str],
        *,
        user: EndUser | str | None = None,
    ) -> list[float]:
        await self._maybe_reload_head()
        await self._ensure_adapter(user)
        key = adapter_key(user)
        return await asyncio.to_thread(self.model.score, context, list(candidates), user=key)

    def forget(self, tenant: str, user: str) -> int:
        """Drop a forgotten user's cached adapters (every version) from this process."""
        return self.model.forget(
            lambda k: isinstance(k, tuple) and len(k) >= 2 and k[0] == tenant and k[1] == user
        )


def _mtime(path: str | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None


def create_lora_reranker(settings: Settings, store: RerankResources | None = None) -> LoraReranker:
    """Factory for the reranker registry (`store` is the registry's RerankResources). Reads the
    optional settings `lora_encoder_path`, `lora_head_path`, `lora_cache_size`, `lora_device`,
    `lora_threads`, `lora_max_context_tokens`, `lora_quantize`."""
    return LoraReranker(model_from_settings(settings), store, getattr(settings, "lora_head_path", None))


def register(registry: RerankerRegistry) -> None:
    """Entry point of `middleware.rerankers`: adds the `lora` factory to the registry."""
    registry.add("lora", create_lora_reranker)
