"""Persona versions in Redis.

The current persona is a byte-for-byte copy of one version blob, so the chat path needs exactly one
GET, and a rollback restores a version exactly as it was stored.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from middleware.errors import NotFound
from middleware.models import Persona, PreferencePair
from middleware.store import keys
from middleware.store.durable import Replication
from middleware.store.guard import ReadBreaker, fail_closed, resolved

log = logging.getLogger("middleware.store")


# KEYS[1] persona version, KEYS[2] adapter. ARGV[1] blob. Store only if the version still exists
# (the user may have been forgotten while the adapter trained).
_STORE_IF_VERSION = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# KEYS: version, versions set, current. ARGV: blob, version number. A new version, made current at
# once (one script: the keys share the user's hash slot, so this is atomic on a cluster too).
_SAVE_VERSION = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[1])
return 1
"""


class PersonaStore:
    def __init__(
        self,
        redis: Redis,
        *,
        read_timeout_s: float = 0.05,
        breaker_s: float = 0.5,
        replication: Replication | None = None,
    ) -> None:
        self._redis = redis
        self._replication = replication or Replication()
        self._save_version = redis.register_script(_SAVE_VERSION)
        self._breaker = ReadBreaker(read_timeout_s, breaker_s)

    # --- the hot path -----------------------------------------------------------------------------
    async def read_current_blob(self, tenant: str, user: str) -> bytes | None:
        """One GET, bounded in time; after a failure the read is skipped for a while (`ReadBreaker`).
        Raises PersonaReadFailed instead of waiting on a sick Redis."""
        self._breaker.check()
        key = keys.persona_current(tenant, user)
        blob: bytes | None = await self._breaker.read(lambda: resolved(self._redis.get(key)))
        return blob

    async def read_current(self, tenant: str, user: str) -> tuple[bytes | None, dict[bytes, bytes]]:
        """The current-persona blob and the user's context hash (`keys.contexts`): one pipeline, one
        round trip, bounded and guarded like `read_current_blob`."""
        self._breaker.check()
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keys.persona_current(tenant, user))
        pipe.hgetall(keys.contexts(tenant, user))
        blob, contexts = await self._breaker.read(pipe.execute)
        return blob, contexts

    # --- admin ---------------------------------------------------------------------------------------
    # A user's persona line and a segment's or the tenant default's (keys.PersonaLine) are one
    # machinery: versions, current copy, rollback. The user methods name the user's line.
    async def get(self, tenant: str, user: str) -> Persona | None:
        return await self.line_current(keys.user_line(tenant, user))

    async def line_current(self, line: keys.PersonaLine) -> Persona | None:
        blob = await fail_closed(self._redis.get(line.current))
        return Persona.model_validate_json(blob) if blob else None

    async def version(self, tenant: str, user: str, version: int) -> Persona | None:
        blob = await fail_closed(self._redis.get(keys.persona_version(tenant, user, version)))
        return Persona.model_validate_json(blob) if blob else None

    async def list_versions(self, tenant: str, user: str) -> list[Persona]:
        return await self.line_versions(keys.user_line(tenant, user))

    async def line_versions(self, line: keys.PersonaLine) -> list[Persona]:
        numbers = await fail_closed(self._redis.zrange(line.versions, 0, -1))
        if not numbers:
            return []
        blobs = await fail_closed(self._redis.mget([line.version(int(n)) for n in numbers]))
        return [Persona.model_validate_json(b) for b in blobs if b]

    async def adapters(self, tenant: str, user: str, versions: list[int]) -> dict[int, bytes]:
        """The `lora` adapter blobs stored beside these persona versions, as stored (one MGET);
        versions without an adapter are left out."""
        if not versions:
            return {}
        blobs = await fail_closed(self._redis.mget([keys.adapter(tenant, user, v) for v in versions]))
        return {v: blob for v, blob in zip(versions, blobs, strict=True) if blob}

    async def save_adapter(self, tenant: str, user: str, version: int, blob: bytes) -> bool:
        """Store an adapter blob beside persona version `version`, if that version still exists."""
        script_args: list[Any] = [
            keys.persona_version(tenant, user, version),
            keys.adapter(tenant, user, version),
            blob,
        ]
        return bool(await fail_closed(self._redis.eval(_STORE_IF_VERSION, 2, *script_args)))

    async def adapter(self, tenant: str, user: str, version: int) -> bytes | None:
        """The adapter blob stored beside persona version `version`, as stored."""
        blob: bytes | None = await fail_closed(self._redis.get(keys.adapter(tenant, user, version)))
        return blob

    async def save(
        self,
        tenant: str,
        user: str,
        text: str,
        exemplars: list[PreferencePair],
        provenance: dict[str, Any] | None = None,
    ) -> Persona:
        """Store a new version of the user's persona and make it current in one step (replicated, see `Replication`)."""
        return await self.save_line(
            keys.user_line(tenant, user), text, exemplars, provenance, index=(keys.tenant_users(tenant), user)
        )

    async def save_line(
        self,
        line: keys.PersonaLine,
        text: str,
        exemplars: list[PreferencePair],
        provenance: dict[str, Any] | None = None,
        *,
        index: tuple[str, str] | None = None,
    ) -> Persona:
        """Store a new version on a persona line and make it current in one step (`index`: a
        set and a member to add in it, the tenant's user index for a user's line)."""
        version = int(await fail_closed(self._redis.incr(line.seq)))
        persona = Persona(
            text=text,
            version=version,
            version_id=uuid.uuid4().hex,
            exemplars=exemplars,
            provenance=provenance or {},
            created_at=datetime.now(UTC).isoformat(),
        )
        blob = persona.model_dump_json().encode()
        version_keys = [line.version(version), line.versions, line.current]
        await self._replication.script(self._redis, self._save_version, version_keys, [blob, version])
        if index is not None:  # the tenant's index lives in another slot: a second command, after the data
            await fail_closed(self._redis.sadd(*index))
        return persona

    async def rollback(self, tenant: str, user: str, version: int) -> Persona:
        return await self.line_rollback(keys.user_line(tenant, user), version, owner="user")

    async def line_rollback(self, line: keys.PersonaLine, version: int, *, owner: str) -> Persona:
        blob = await fail_closed(self._redis.get(line.version(version)))
        if not blob:
            raise NotFound(f"persona version {version} does not exist for this {owner}", param="version")
        await fail_closed(self._redis.set(line.current, blob))
        return Persona.model_validate_json(blob)

    async def clear_current(self, tenant: str, user: str) -> bool:
        """Switch personalization off for the user; stored versions stay for rollback."""
        return await self.line_clear(keys.user_line(tenant, user))

    async def line_clear(self, line: keys.PersonaLine) -> bool:
        return bool(await fail_closed(self._redis.delete(line.current)))
