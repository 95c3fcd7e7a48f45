"""Which persona a chat call is personalised with, and where it came from.

The order (docs/ARCHITECTURE.md "Segments"): the user's own persona for the routed context, the
user's general persona, the persona of the user's segment (the one the request names, else the one
the operator assigned), the tenant's default persona, nothing. Everything is read in one pipeline
(`store/segments.py`), with the quota check when the tenant is metered (`quotas.Quotas`): the heads
of the blobs, resolved against the versions this process has decoded (`Personalizer`); a version
it has not is read whole, once (`PersonaReader.whole`).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

from middleware.personalize.service import ActivePersona, Personalizer
from middleware.store.guard import PersonaReadFailed
from middleware.store.policy import Posteriors
from middleware.store.segments import PersonaReader, PersonaReads

# The values of the `x-persona-source` header.
SOURCES = ("user-context", "user", "segment", "tenant", "none")


class Resolved(NamedTuple):
    """The persona a call uses (None: none), its source (one of `SOURCES`) and the user's segment."""

    persona: ActivePersona | None
    source: str
    segment: str | None = None

    @property
    def version(self) -> int | None:
        return self.persona.version if self.persona is not None else None


NOTHING = Resolved(None, "none")


def traced(span: Any, resolved: Resolved) -> Resolved:
    """`resolved`, noted on the persona.read span (None: tracing off): version and source, no text."""
    if span is not None:
        span.set_attribute("persona.version", resolved.version or 0)
        span.set_attribute("persona.source", resolved.source)
    return resolved


class Resolver:
    def __init__(self, personalizer: Personalizer, reader: PersonaReader) -> None:
        self.personalizer = personalizer
        self._reader = reader

    async def of(self, reads: PersonaReads, *, tag: str | None = None, text: str = "") -> Resolved:
        """The persona the reads resolve to (nothing when a part that had to be read whole could
        not be). First step: the user's persona for the context the call routes to (its `tag`,
        else its last user turn `text`; `Personalizer.route`)."""
        personalizer = self.personalizer
        try:
            if not reads.contexts_complete:
                reads = await self._reader.complete(reads)
            whole = partial(self._reader.whole, reads)
            found = await personalizer.resolve(reads.own, reads.contexts, whole, tag=tag, text=text)
            if found is not None:
                return Resolved(found, "user-context" if found.context is not None else "user", reads.segment)
            shared = await personalizer.persona(reads.shared, whole, "shared")
        except PersonaReadFailed as exc:
            personalizer.read_failed(exc, quiet=exc.skipped)
            return NOTHING
        if shared is not None:
            return Resolved(shared, reads.shared_source, reads.segment)
        return Resolved(None, "none", reads.segment)

    async def read(
        self,
        tenant: str,
        user: str,
        *,
        segment: str | None = None,
        tag: str | None = None,
        text: str = "",
        policy: bool = False,
    ) -> tuple[Resolved, tuple[Posteriors, Posteriors] | None]:
        """Read and resolve (no quota check rides along) and, with `policy`, the auto mode's
        posteriors in the same round trip (None without, or when Redis failed: a sick Redis
        resolves to nothing)."""
        with self.personalizer.tracing.span("persona.read", tenant, user) as span:
            try:
                reads, posteriors = await self._reader.read(tenant, user, segment, policy=policy)
            except PersonaReadFailed as exc:
                self.personalizer.read_failed(exc, quiet=exc.skipped)
                return NOTHING, None
            return traced(span, await self.of(reads, tag=tag, text=text)), posteriors
