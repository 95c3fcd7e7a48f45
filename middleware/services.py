"""The long-lived objects one app instance owns, built in the lifespan and handed to routes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import aiohttp
from redis.asyncio import Redis

from middleware.config import Settings
from middleware.metrics import Metrics
from middleware.personalize.service import Personalizer
from middleware.store.personas import PersonaStore
from middleware.store.preferences import PreferenceStore
from middleware.upstream import UpstreamRouter

T = TypeVar("T")


@dataclass
class Services:
    settings: Settings
    redis: Redis
    http: aiohttp.ClientSession
    metrics: Metrics
    personas: PersonaStore
    preferences: PreferenceStore
    personalizer: Personalizer
    upstreams: UpstreamRouter
    # Filled by later subsystems (job queue pool, reranker registry, ...), keyed by name.
    extras: dict[str, Any] = field(default_factory=dict)

    def shared(self, name: str, factory: Callable[[Services], T]) -> T:
        """The one instance of a per-app helper, made on first use and kept in `extras`."""
        found = self.extras.get(name)
        if found is None:
            found = self.extras[name] = factory(self)
        return cast(T, found)

    async def close(self) -> None:
        for extra in self.extras.values():
            closer = getattr(extra, "aclose", None) or getattr(extra, "close", None)
            if closer is not None:
                result = closer()
                if hasattr(result, "__await__"):
                    await result
        await self.http.close()
        await self.redis.aclose()


def build_services(settings: Settings) -> Services:
    from middleware.store.connection import create_redis

    redis = create_redis(settings)
    metrics = Metrics()
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.upstream_max_connections, ttl_dns_cache=300),
    )
    personas = PersonaStore(redis, read_timeout_s=settings.persona_read_timeout_s)
    return Services(
        settings=settings,
        redis=redis,
        http=http,
        metrics=metrics,
        personas=personas,
        preferences=PreferenceStore(redis),
        personalizer=Personalizer(personas, settings, metrics),
        upstreams=UpstreamRouter(settings, http, metrics.upstream_retries.inc),
    )
