"""The persona of one (tenant, user) on the chat path: one Redis round trip, fail open, decoded and
rendered once per persona version.

The round trip reads the general persona and the user's context hash (context personas and the
router, `middleware.personalize.contexts`); `resolve` picks the context persona when the request's
tag or its last user turn routes to one, else the general persona.

The current-persona blob is written by `PersonaStore.save` as `{"version":N,"version_id":"...",
"text":...}`: the version id is read from those first bytes without decoding the rest (text,
exemplars, provenance id lists), and the decoded persona with its rendered block is cached by
version id. A blob in an older field order is parsed to find its version id instead.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

import orjson

from middleware.config import Settings
from middleware.metrics import Metrics
from middleware.models import Persona
from middleware.personalize.block import render_persona_block
from middleware.personalize.contexts import ROUTER_HEAD, Route, Router, RouterSpec, choose
from middleware.store.guard import described
from middleware.store.personas import PersonaReadFailed, PersonaStore
from middleware.tracing import TRACING_OFF, Tracing

log = logging.getLogger("middleware.personalize")

# The head of a stored persona blob (`Persona` dumps its version fields first).
_HEAD_RE = re.compile(rb'\{"version":\d+,"version_id":"([0-9A-Za-z_-]{1,64})"')


class ActivePersona(NamedTuple):
    """The persona version a request is personalised with: the block injected, and the persona it
    was rendered from (text and exemplars; the provenance is not kept on the chat path)."""

    block: str
    version: int
    version_id: str
    persona: Persona
    context: str | None = None  # the context persona's name; None: the general persona


def version_id_of(blob: bytes) -> str | None:
    """The version id at the head of a stored persona blob (None if the blob has another shape)."""
    head = _HEAD_RE.match(blob)
    if head is not None:
        return head.group(1).decode()
    try:
        found = orjson.loads(blob).get("version_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, str) else None


class Personalizer:
    def __init__(
        self, store: PersonaStore, settings: Settings, metrics: Metrics, tracing: Tracing = TRACING_OFF
    ) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self.tracing = tracing
        self._cache: OrderedDict[str, ActivePersona] = OrderedDict()
        self._plain_blocks: OrderedDict[str, str] = OrderedDict()  # version id -> block, no exemplars
        self._routers: OrderedDict[str, Router] = OrderedDict()

    async def current(
        self, tenant: str, user: str, *, tag: str | None = None, text: str = ""
    ) -> ActivePersona | None:
        """The user's persona version for this request (a context's, routed by `tag` or the last
        user turn `text`, else the general one) with its rendered block, or None when they have
        none or Redis is sick."""
        with self.tracing.span("persona.read", tenant, user) as span:
            try:
                blob, contexts = await self._store.read_current(tenant, user)
            except PersonaReadFailed as exc:
                self.read_failed(exc, quiet=exc.skipped)
                return None
            found = self.resolve(blob, contexts, tag=tag, text=text)
            if span is not None:
                span.set_attribute("persona.version", found.version if found is not None else 0)
            return found

    def resolve(
        self, blob: bytes | None, contexts: Mapping[bytes, bytes], *, tag: str | None = None, text: str = ""
    ) -> ActivePersona | None:
        """The persona for a request from what the round trip read: the routed context's persona
        (`route`), else the general one."""
        route = self.route(contexts, tag=tag, text=text)
        self.count_route(route)
        if route.context is not None:
            return self.from_blob(contexts[b"c:" + route.context.encode()], context=route.context)
        return self.from_blob(blob)

    def count_route(self, route: Route) -> None:
        self._metrics.persona_context_routed.labels(route.decision).inc()

    def route(self, contexts: Mapping[bytes, bytes], *, tag: str | None, text: str) -> Route:
        """The context step of resolution, on the user's context hash as read (`keys.contexts`)."""
        if not contexts:
            return Route("general", None)
        available = [f[2:].decode() for f in contexts if f.startswith(b"c:")]
        router_blob = contexts.get(b"router")
        router = self._router(router_blob) if router_blob and tag is None else None
        return choose(router, available, tag=tag, text=text, threshold=self._settings.context_route_threshold)

    def _router(self, blob: bytes) -> Router | None:
        head = ROUTER_HEAD.match(blob)
        router_id = head.group(1).decode() if head else None
        found = self._routers.get(router_id) if router_id is not None else None
        if found is not None:
            self._routers.move_to_end(router_id)  # type: ignore[arg-type]
            return found
        try:
            router = Router(RouterSpec.model_validate_json(blob))
        except ValueError:
            log.warning("context router blob unreadable; routing to the general persona")
            return None
        self._routers[router.spec.router_id] = router
        while len(self._routers) > self._settings.persona_cache_size:
            self._routers.popitem(last=False)
        return router

    def from_blob(self, blob: bytes | None, *, context: str | None = None) -> ActivePersona | None:
        """The rendered block of a current-persona blob read elsewhere (e.g. in one pipeline with the
        quota check), or None."""
        if not blob:
            return None
        version_id = version_id_of(blob)  # a few bytes, not the whole blob
        found = self._cache.get(version_id) if version_id is not None else None
        if found is not None:
            self._cache.move_to_end(found.version_id)
            return found
        persona = Persona.model_validate_json(blob)
        persona = persona.model_copy(update={"provenance": {}})
        active = ActivePersona(self.render(persona), persona.version, persona.version_id, persona, context)
        self._cache[persona.version_id] = active
        while len(self._cache) > self._settings.persona_cache_size:
            self._cache.popitem(last=False)
        return active

    def block_without_exemplars(self, found: ActivePersona) -> str:
        """The block of `found` without its exemplars (the auto mode's `inject-no-exemplars` arm),
        rendered once per version."""
        block = self._plain_blocks.get(found.version_id)
        if block is None:
            block = self._plain_blocks[found.version_id] = render_persona_block(
                found.persona,
                max_chars=self._settings.persona_max_chars,
                exemplars_max=0,
                exemplar_max_chars=self._settings.exemplar_max_chars,
            )
            while len(self._plain_blocks) > self._settings.persona_cache_size:
                self._plain_blocks.popitem(last=False)
        else:
            self._plain_blocks.move_to_end(found.version_id)
        return block

    def read_failed(self, exc: BaseException, *, quiet: bool = False) -> None:
        """Count a persona read that failed (the chat goes on without a persona);
        `quiet`: not logged (a read skipped while the store is known to be down)."""
        self._metrics.persona_read_failures.inc()
        if not quiet:
            log.warning("persona read failed, continuing without persona: %s", described(exc))

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
