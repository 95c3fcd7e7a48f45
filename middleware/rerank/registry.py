"""Loading rerankers from the `middleware.rerankers` entry points.

A plugin is a module with `def register(registry): registry.add("name", factory)`, declared as

    [project.entry-points."middleware.rerankers"]
    myscorer = "my_package.my_module:register"

Registration only records factories; a reranker is built the first time it is asked for.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import entry_points

from middleware.config import Settings
from middleware.errors import InvalidRequest
from middleware.rerank.hookspec import Reranker, RerankerFactory
from middleware.rerank.resources import RerankResources

log = logging.getLogger("middleware.rerank")
ENTRY_POINT_GROUP = "middleware.rerankers"


def require_enabled(settings: Settings, name: str) -> str:
    """A reranker a request may name: one the operator enabled (`PERSONA_RERANKERS_ENABLED`, or the
    default `PERSONA_RERANKER`). Anything else is refused before anything is built or imported."""
    enabled = [*settings.rerankers_enabled, settings.reranker]
    if name not in enabled:
        raise InvalidRequest(
            f"reranker {name!r} is not enabled; enabled: {', '.join(dict.fromkeys(enabled))}",
            param="x-persona-reranker",
            code="reranker_not_enabled",
        )
    return name


class RerankerRegistry:
    def __init__(self, settings: Settings, resources: RerankResources) -> None:
        self._settings = settings
        self._resources = resources
        self._factories: dict[str, RerankerFactory] = {}
        self._instances: dict[str, Reranker] = {}
        self._building: dict[str, asyncio.Lock] = {}

    def add(self, name: str, factory: RerankerFactory) -> None:
        self._factories[name] = factory
        self._instances.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Reranker:
        self._require(name)
        if name not in self._instances:
            self._instances[name] = self._factories[name](self._settings, self._resources)
        return self._instances[name]

    async def aget(self, name: str) -> Reranker:
        """Like `get`, for the event loop: a reranker's first build (the `lora` one loads torch and
        its encoder, for seconds) runs in a thread, once, while other requests go on."""
        self._require(name)
        if name in self._instances:
            return self._instances[name]
        async with self._building.setdefault(name, asyncio.Lock()):
            if name not in self._instances:
                factory = self._factories[name]
                self._instances[name] = await asyncio.to_thread(factory, self._settings, self._resources)
        return self._instances[name]

    def _require(self, name: str) -> None:
        if name not in self._factories:
            raise InvalidRequest(
                f"unknown reranker {name!r}; available: {', '.join(self.names()) or 'none'}",
                param="reranker",
                code="unknown_reranker",
            )

    def forget(self, tenant: str, user: str) -> None:
        """Tell the rerankers built in this process that a user was forgotten (optional
        `forget(tenant, user)` on a reranker: drop in-memory per-user state such as cached adapters)."""
        for name, reranker in self._instances.items():
            forget = getattr(reranker, "forget", None)
            if forget is not None:
                try:
                    forget(tenant, user)
                except Exception as exc:
                    log.error("reranker %s failed to forget a user: %s", name, exc)

    def load_entry_points(self) -> RerankerRegistry:
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry_point.load()(self)
            except Exception as exc:  # a broken plugin must not take the proxy down
                log.error("reranker plugin %s failed to register: %s", entry_point.name, exc)
        return self
