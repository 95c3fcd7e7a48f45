"""The persona of one (tenant, user) on the chat path: one Redis round trip, fail open, decoded and
rendered once per persona version.

The round trip reads the general persona and the user's context hash (context personas and the
router, `middleware.personalize.contexts`); `resolve` picks the context persona when the request's
tag or its last user turn routes to one, else the general persona.

The current-persona blob is written by `PersonaStore.save` as `{"version":N,"version_id":"...",
"text":...}`, and the router's as `{"router_id":"...",...}`: the id is read from those first bytes
(the head, all the chat path's round trip brings back: `store/segments.py`), and the decoded persona
with its rendered block (the decoded router) is cached by it. A version not in the cache is read
whole, once (`Whole`). A blob in an older field order has no id in its head: it is read whole and
parsed to find its version id instead.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple

import orjson

from middleware.config import Settings
from middleware.metrics import Metrics
from middleware.models import Persona
from middleware.personalize.block import render_persona_block
from middleware.personalize.contexts import ROUTER_HEAD, Route, Router, RouterSpec, choose
from middleware.store.contexts import CONTEXT_PREFIX, ROUTER_FIELD
from middleware.store.guard import PersonaReadFailed, described
from middleware.store.personas import PersonaStore
from middleware.store.segments import Part
from middleware.tracing import TRACING_OFF, Tracing

log = logging.getLogger("middleware.personalize")

# The head of a stored persona blob (`Persona` dumps its version fields first).
_HEAD_RE = re.compile(rb'\{"version":\d+,"version_id":"([0-9A-Za-z_-]{1,64})"')

# A part of what a persona read found, read whole: "own", "shared" or a field of the context hash
# (`store.segments.PersonaReads.whole_command`); None when it is gone.
Whole = Callable[[Part], Awaitable[bytes | None]]


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

            async def whole(part: Part) -> bytes | None:  # read whole already
                return blob if part == "own" else contexts.get(part) if isinstance(part, bytes) else None

            found = await self.resolve(blob, contexts, whole, tag=tag, text=text)
            if span is not None:
                span.set_attribute("persona.version", found.version if found is not None else 0)
            return found

    async def resolve(
        self,
        own: bytes | None,
        contexts: Mapping[bytes, bytes],
        whole: Whole,
        *,
        tag: str | None = None,
        text: str = "",
    ) -> ActivePersona | None:
        """The persona for a request from what the round trip read (heads or whole blobs: the own
        persona's, and the context hash's): the routed context's persona (`route`), else the
        general one. A version not decoded yet is read whole (`whole`)."""
        route = await self.route(contexts, whole, tag=tag, text=text)
        self.count_route(route)
        if route.context is not None:
            field = CONTEXT_PREFIX + route.context.encode()
            found = await self.persona(contexts[field], whole, field, context=route.context)
            if found is not None:
                return found
        return await self.persona(own, whole, "own")

    async def persona(
        self, head: bytes | None, whole: Whole, part: Part, *, context: str | None = None
    ) -> ActivePersona | None:
        """The persona whose blob starts with `head`: decoded already, else read whole (`part`)."""
        if not head:
            return None
        match = _HEAD_RE.match(head)
        found = self._cached(match.group(1).decode() if match is not None else None)
        return found if found is not None else self.from_blob(await whole(part), context=context)

    def count_route(self, route: Route) -> None:
        self._metrics.context_routes(route.decision).inc()

    async def route(
        self, contexts: Mapping[bytes, bytes], whole: Whole, *, tag: str | None, text: str
    ) -> Route:
        """The context step of resolution, on the user's context hash as read (`keys.contexts`)."""
        if not contexts:
            return Route("general", None)
        available = [f[2:].decode() for f in contexts if f.startswith(CONTEXT_PREFIX)]
        router_head = contexts.get(ROUTER_FIELD)
        router = None
        if router_head and tag is None:
            router = self._cached_router(router_head)
            if router is None:
                blob = await whole(ROUTER_FIELD)
                router = self._router(blob) if blob else None
        return choose(router, available, tag=tag, text=text, threshold=self._settings.context_route_threshold)

    def _cached_router(self, head: bytes) -> Router | None:
        match = ROUTER_HEAD.match(head)
        found = self._routers.get(match.group(1).decode()) if match is not None else None
        if found is not None:
            self._routers.move_to_end(found.spec.router_id)
        return found

    def _router(self, blob: bytes) -> Router | None:
        found = self._cached_router(blob)
        if found is not None:
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
        """The rendered block of a whole current-persona blob (decoded once per version), or None."""
        if not blob:
            return None
        found = self._cached(version_id_of(blob))  # the id from a few bytes, not the whole blob
        if found is not None:
            return found
        persona = Persona.model_validate_json(blob)
        persona = persona.model_copy(update={"provenance": {}})
        active = ActivePersona(self.render(persona), persona.version, persona.version_id, persona, context)
        self._cache[persona.version_id] = active
        while len(self._cache) > self._settings.persona_cache_size:
            self._cache.popitem(last=False)
        return active

    def _cached(self, version_id: str | None) -> ActivePersona | None:
        """The persona version decoded already (most recently used), or None."""
        found = self._cache.get(version_id) if version_id is not None else None
        if found is not None:
            self._cache.move_to_end(found.version_id)
        return found

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
