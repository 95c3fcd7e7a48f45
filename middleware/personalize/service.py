"""The persona block for one (tenant, user): one Redis GET, fail open, rendered once per version."""

from __future__ import annotations

import logging
from typing import NamedTuple

import orjson

from middleware.config import Settings
from middleware.metrics import Metrics
from middleware.models import Persona
from middleware.personalize.block import BlockCache, render_persona_block
from middleware.store.personas import PersonaReadFailed, PersonaStore

log = logging.getLogger("middleware.personalize")


class ActivePersona(NamedTuple):
    block: str
    version: int
    version_id: str


class Personalizer:
    def __init__(self, store: PersonaStore, settings: Settings, metrics: Metrics) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._cache = BlockCache(settings.persona_cache_size)

    async def current(self, tenant: str, user: str) -> ActivePersona | None:
        """The user's rendered persona block, or None when they have none or Redis is sick."""
        try:
            blob = await self._store.read_current_blob(tenant, user)
        except PersonaReadFailed as exc:
            self._metrics.persona_read_failures.inc()
            if not exc.skipped:
                log.warning("persona read failed, continuing without persona: %s", exc)
            return None
        return self.from_blob(blob)

    def from_blob(self, blob: bytes | None) -> ActivePersona | None:
        """The rendered block of a current-persona blob read elsewhere (e.g. in one pipeline with the
        quota check), or None."""
        if not blob:
            return None
        head = orjson.loads(blob)
        version_id, version = head["version_id"], int(head["version"])
        block = self._cache.get(version_id)
        if block is None:
            block = self.render(Persona.model_validate(head))
            self._cache.put(version_id, block)
        return ActivePersona(block, version, version_id)

    def read_failed(self, exc: BaseException) -> None:
        """Count a persona read that failed outside `current` (the chat goes on without a persona)."""
        self._metrics.persona_read_failures.inc()
        log.warning("persona read failed, continuing without persona: %s", type(exc).__name__)

    @property
    def read_timeout_s(self) -> float:
        return self._settings.persona_read_timeout_s

    def render(self, persona: Persona) -> str:
        return render_persona_block(
            persona,
            max_chars=self._settings.persona_max_chars,
            exemplars_max=self._settings.exemplars_max,
            exemplar_max_chars=self._settings.exemplar_max_chars,
        )
