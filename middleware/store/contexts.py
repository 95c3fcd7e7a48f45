"""Per-context persona lines in Redis, beside the user's general persona (same hash tag, same slot).

Each context has its own version line (`ctx:<name>:v<N>`, a sorted set and a counter, like the
general persona's). The current persona of every context and the router's centroids live in one hash
(`keys.contexts`), and the head of each (its first `HEAD_BYTES`, which hold its version id) in
another (`keys.context_heads`), written with it in one transaction. The chat path reads the heads in
the pipeline that reads the general persona's head (`store/segments.py`), and a blob whole only for
a version its process has not decoded yet: a call reads a few hundred bytes where the blobs are tens
of kilobytes (a router induced from real prompts, its IDF table and centroids, is 65 KB or more).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from middleware.errors import NotFound
from middleware.models import Persona, PreferencePair
from middleware.store import keys
from middleware.store.connection import one_slot_pipeline
from middleware.store.guard import fail_closed

ROUTER_FIELD = b"router"
CONTEXT_PREFIX = b"c:"
# The bytes at the head of a current blob the chat path reads: enough for its version id
# (`Persona`'s `{"version":N,"version_id":"<up to 64>"`, `RouterSpec`'s `{"router_id":"<up to 64>"`).
HEAD_BYTES = 128

# KEYS[1] the contexts hash, KEYS[2] its heads hash. ARGV[1] head bytes. The heads hash made anew from
# the contexts hash, as one atomic step (a save in between cannot leave a stale head behind); returns
# it flat (field, head, ...). For contexts stored before their heads were: once per user, since the
# heads then match (a script turning values into Lua strings is slow, tens of µs per KB-sized hash).
WRITE_HEADS = """
local size = tonumber(ARGV[1])
local hash = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[2])
local heads = {}
for i = 1, #hash, 2 do
  heads[i] = hash[i]
  heads[i + 1] = string.sub(hash[i + 1], 1, size)
end
if #heads > 0 then redis.call('HSET', KEYS[2], unpack(heads)) end
return heads
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ContextStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def save(
        self,
        tenant: str,
        user: str,
        name: str,
        text: str,
        exemplars: list[PreferencePair],
        provenance: dict[str, Any] | None = None,
    ) -> Persona:
        """Store a new version of context `name` and make it the context's current one (one
        transaction in the user's slot)."""
        version = int(await fail_closed(self._redis.incr(keys.context_seq(tenant, user, name))))
        persona = Persona(
            text=text,
            version=version,
            version_id=uuid.uuid4().hex,
            exemplars=exemplars,
            provenance={**(provenance or {}), "context": name},
            created_at=datetime.now(UTC).isoformat(),
        )
        blob = persona.model_dump_json().encode()
        pipe = one_slot_pipeline(self._redis)
        pipe.set(keys.context_version(tenant, user, name, version), blob)
        pipe.zadd(keys.context_versions(tenant, user, name), {str(version): version})
        self._put(pipe, tenant, user, f"c:{name}", blob)
        pipe.sadd(keys.context_names(tenant, user), name)
        await fail_closed(pipe.execute())
        # the tenant's user index lives in another slot: a second command, after the data
        await fail_closed(self._redis.sadd(keys.tenant_users(tenant), user))
        return persona

    async def set_router(self, tenant: str, user: str, blob: bytes) -> None:
        pipe = one_slot_pipeline(self._redis)
        self._put(pipe, tenant, user, "router", blob)
        await fail_closed(pipe.execute())

    @staticmethod
    def _put(pipe: Any, tenant: str, user: str, field: str, blob: bytes) -> None:
        """A field of the contexts hash and its head (`keys.context_heads`), in `pipe`."""
        pipe.hset(keys.contexts(tenant, user), field, blob)
        pipe.hset(keys.context_heads(tenant, user), field, blob[:HEAD_BYTES])

    async def router_blob(self, tenant: str, user: str) -> bytes | None:
        blob = await fail_closed(self._redis.hget(keys.contexts(tenant, user), "router"))
        return blob if isinstance(blob, bytes) else None

    async def names(self, tenant: str, user: str) -> list[str]:
        return sorted(
            _text(n) for n in await fail_closed(self._redis.smembers(keys.context_names(tenant, user)))
        )

    async def current(self, tenant: str, user: str) -> dict[str, Persona]:
        """Each context's current persona (contexts switched off are left out)."""
        raw = await fail_closed(self._redis.hgetall(keys.contexts(tenant, user)))
        found = {}
        for field, blob in raw.items():
            field = field if isinstance(field, bytes) else field.encode()
            if field.startswith(CONTEXT_PREFIX):
                found[field[len(CONTEXT_PREFIX) :].decode()] = Persona.model_validate_json(blob)
        return dict(sorted(found.items()))

    async def versions(self, tenant: str, user: str, name: str) -> list[Persona]:
        numbers = await fail_closed(self._redis.zrange(keys.context_versions(tenant, user, name), 0, -1))
        if not numbers:
            return []
        blobs = await fail_closed(
            self._redis.mget([keys.context_version(tenant, user, name, int(n)) for n in numbers])
        )
        return [Persona.model_validate_json(b) for b in blobs if b]

    async def rollback(self, tenant: str, user: str, name: str, version: int) -> Persona:
        blob = await fail_closed(self._redis.get(keys.context_version(tenant, user, name, version)))
        if not blob:
            raise NotFound(
                f"context {name!r} has no persona version {version} for this user", param="version"
            )
        pipe = one_slot_pipeline(self._redis)
        self._put(pipe, tenant, user, f"c:{name}", blob)
        await fail_closed(pipe.execute())
        return Persona.model_validate_json(blob)

    async def clear(self, tenant: str, user: str, name: str) -> bool:
        """Switch context `name` off (the general persona answers for it); its versions stay."""
        pipe = one_slot_pipeline(self._redis)
        pipe.hdel(keys.contexts(tenant, user), f"c:{name}")
        pipe.hdel(keys.context_heads(tenant, user), f"c:{name}")
        removed, _ = await fail_closed(pipe.execute())
        return bool(removed)
