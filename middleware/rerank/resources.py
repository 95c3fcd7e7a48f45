"""What the built-in rerankers may use: the upstream router and the persona store (adapters)."""

from __future__ import annotations

from dataclasses import dataclass

from middleware.models import Persona
from middleware.rerank.hookspec import EndUser
from middleware.store.personas import PersonaStore
from middleware.upstream import UpstreamRouter


@dataclass(frozen=True)
class RerankResources:
    upstreams: UpstreamRouter
    personas: PersonaStore

    async def persona(self, user: EndUser | None) -> Persona | None:
        """The persona version the request was personalised with (None: it had none)."""
        if user is None:
            return None
        if user.persona is not None:
            return user.persona
        if user.persona_version is None:
            return None
        return await self.personas.version(user.tenant, user.id, user.persona_version)

    async def get_lora_adapter(self, user: EndUser) -> bytes | None:
        """The adapter trained beside the persona version the request uses (`user.persona_version`),
        else beside the user's current version; None when there is none."""
        version = user.persona_version
        if version is None:
            persona = await self.personas.get(user.tenant, user.id)
            if persona is None:
                return None
            version = persona.version
        return await self.personas.adapter(user.tenant, user.id, version)
