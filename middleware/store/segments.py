"""A tenant's segments, who belongs to which, and the persona reads of the chat path.

Every key here carries the tenant's `{segments:<tenant>}` hash tag (`keys.segments_tag`): the
segment index, the operator's assignments (user -> segment), each segment's persona line and the
tenant's default persona line. So one script (`RESOLVE`) on one slot finds, for a user with no
persona of their own, the persona of the segment the request names or the operator assigned, else
the tenant default. The user's own persona and context hash live under the user's tag (`HEADS`);
the chat path sends both scripts (and the quota check, `store/ratelimits.py`) in one pipeline: one
round trip on a single Redis or a Sentinel group, one per slot (done concurrently) on a Cluster.

The round trip brings back heads, not blobs: the first `HEAD_BYTES` of each current persona and of
the context router, which hold their version id (`Persona` and `RouterSpec` dump it first): GETRANGE
for a persona, the heads hash for the contexts (`keys.context_heads`, written with the contexts
hash: `store/contexts.py`). The proxy keeps each version decoded, so a call brings back a few hundred
bytes where whole blobs would be tens of kilobytes; a version the process has not seen yet is read
whole once (`PersonaReader.whole`). The contexts hash's length rides along: a heads hash that does
not match it (contexts stored before heads were) is written anew from it, once
(`PersonaReader.complete`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import orjson
from redis.asyncio import Redis

from middleware.store import keys
from middleware.store.contexts import HEAD_BYTES, WRITE_HEADS
from middleware.store.guard import ReadBreaker, fail_closed
from middleware.store.pipelines import Command, ScriptPipelines, as_dict
from middleware.store.policy import Posteriors, policy_read_commands, posteriors_of

# KEYS[1] assignments hash, KEYS[2] the tenant default's current persona.
# ARGV[1] user, ARGV[2] the segment the request names ('' for none), ARGV[3] the segments' key prefix
# (same hash tag as KEYS, so the segment's key is on this slot), ARGV[4] head bytes (`HEAD_BYTES`).
# Returns {source, segment[, the head of its current persona]}.
RESOLVE = """
local last = tonumber(ARGV[4]) - 1
local segment = ARGV[2]
if segment == '' then segment = redis.call('HGET', KEYS[1], ARGV[1]) or '' end
if segment ~= '' then
  local head = redis.call('GETRANGE', ARGV[3] .. segment .. ':persona', 0, last)
  if head ~= '' then return {'segment', segment, head} end
end
local head = redis.call('GETRANGE', KEYS[2], 0, last)
if head ~= '' then return {'tenant', segment, head} end
return {'none', segment}
"""

# A part of a persona read: the user's own persona, the shared one, or a field of the context hash.
Part = Literal["own", "shared"] | bytes


class PersonaReads(NamedTuple):
    """What one chat call's persona read found, as heads (`HEAD_BYTES` of each blob): the user's
    own current persona, the shared one (a segment's or the tenant default's) with where it came
    from, and the user's contexts (field -> head). `PersonaReader.whole` reads any of them whole."""

    tenant: str
    user: str
    own: bytes | None
    shared_source: str  # "segment" | "tenant" | "none"
    segment: str | None
    shared: bytes | None
    contexts: Mapping[bytes, bytes] = MappingProxyType({})
    # False: the heads hash did not match the contexts hash (`PersonaReader.complete` reads it whole)
    contexts_complete: bool = True

    def whole_command(self, part: Part) -> Command:
        """The command that reads a part whole: "own", "shared" or a field of the context hash."""
        if part == "own":
            return ("GET", keys.persona_current(self.tenant, self.user))
        if part == "shared":
            if self.shared_source == "segment" and self.segment is not None:
                return ("GET", keys.segment_line(self.tenant, self.segment).current)
            return ("GET", keys.tenant_default_line(self.tenant).current)
        return ("HGET", keys.contexts(self.tenant, self.user), part)


def read_commands(resolve_sha: str, tenant: str, user: str, segment: str | None) -> list[Command]:
    """The persona reads of one chat call; their replies, in this order, are read by `reads_of`."""
    return [
        ("GETRANGE", keys.persona_current(tenant, user), 0, HEAD_BYTES - 1),
        ("HGETALL", keys.context_heads(tenant, user)),
        ("HLEN", keys.contexts(tenant, user)),
        (
            "EVALSHA",
            resolve_sha,
            2,
            keys.segment_members(tenant),
            keys.tenant_default_line(tenant).current,
            user,
            segment or "",
            keys.segment_base(tenant, ""),
            HEAD_BYTES,
        ),
    ]


def reads_of(replies: Sequence[Any], at: int, tenant: str, user: str) -> PersonaReads:
    """What `read_commands` found: its replies, from `replies[at]` on, in the order it lists them
    (the own persona's head, the context heads as a dict or HGETALL's flat reply, the contexts
    hash's length, RESOLVE's)."""
    own, heads, count, resolved_reply = replies[at : at + 4]
    source = resolved_reply[0].decode() if isinstance(resolved_reply[0], bytes) else str(resolved_reply[0])
    segment = resolved_reply[1].decode() if isinstance(resolved_reply[1], bytes) else resolved_reply[1]
    shared = resolved_reply[2] if len(resolved_reply) > 2 else None
    contexts = as_dict(heads)
    return PersonaReads(
        tenant, user, own or None, source, segment or None, shared, contexts, len(contexts) == count
    )


class PersonaReader:
    """The chat path's persona read when no quota check rides with it: the heads and `RESOLVE` in
    one pipeline, bounded in time, skipped for `breaker_s` after a failure; and, for either path,
    the reading of a part whole (`whole`, `complete`)."""

    def __init__(
        self,
        redis: Redis,
        *,
        read_timeout_s: float = 0.05,
        breaker_s: float = 0.5,
    ) -> None:
        self._pipelines = ScriptPipelines(redis)
        self._resolve_sha = self._pipelines.add(RESOLVE)
        # `whole` and `complete`: not RESOLVE to load first (on a cluster, one round trip per master),
        # which would spend the read's time
        self._plain = ScriptPipelines(redis)
        self._write_heads_sha = self._plain.add(WRITE_HEADS)
        self._breaker = ReadBreaker(read_timeout_s, breaker_s)

    async def read(
        self, tenant: str, user: str, segment: str | None, *, policy: bool = False
    ) -> tuple[PersonaReads, tuple[Posteriors, Posteriors] | None]:
        """The persona reads and, with `policy`, the user's and the tenant's auto-mode posteriors
        (`store/policy.py`) in the same pipeline (None without)."""
        self._breaker.check()
        commands = read_commands(self._resolve_sha, tenant, user, segment)
        policy_at = len(commands)  # where the posteriors' replies start
        if policy:
            commands += policy_read_commands(tenant, user)
        replies = await self._run(self._pipelines, commands)
        return reads_of(replies, 0, tenant, user), posteriors_of(replies, policy_at) if policy else None

    async def whole(self, reads: PersonaReads, part: Part) -> bytes | None:
        """A part of `reads` read whole (`PersonaReads.whole_command`; None: gone since), bounded in
        time like the read. A version this process has not decoded yet comes this way, once."""
        [blob] = await self._run(self._plain, [reads.whole_command(part)])
        return blob if isinstance(blob, bytes) else None

    async def complete(self, reads: PersonaReads) -> PersonaReads:
        """`reads` with the heads of its contexts, when its heads hash did not match them (contexts
        stored before their heads were): the heads hash is written anew from the contexts hash
        (`WRITE_HEADS`), so the user's next calls find it whole."""
        tenant, user = reads.tenant, reads.user
        [found] = await self._run(
            self._plain,
            [
                (
                    "EVALSHA",
                    self._write_heads_sha,
                    2,
                    keys.contexts(tenant, user),
                    keys.context_heads(tenant, user),
                    HEAD_BYTES,
                )
            ],
        )
        return reads._replace(contexts=as_dict(found), contexts_complete=True)

    async def _run(self, pipelines: ScriptPipelines, commands: list[Command]) -> list[Any]:
        """The replies, bounded in time; a failure opens the breaker and raises PersonaReadFailed."""
        return await self._breaker.read(lambda: pipelines.run(commands))


class SegmentStore:
    """The operator's side: segments, assignments (the personas go through `PersonaStore`'s lines)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def put(self, tenant: str, segment: str, description: str) -> dict[str, Any]:
        record = {"name": segment, "description": description}
        await fail_closed(
            self._redis.hset(keys.segment_index(tenant), segment, orjson.dumps(record).decode())
        )
        return record

    async def get(self, tenant: str, segment: str) -> dict[str, Any] | None:
        raw = await fail_closed(self._redis.hget(keys.segment_index(tenant), segment))
        return dict(orjson.loads(raw)) if raw else None

    async def all(self, tenant: str) -> list[dict[str, Any]]:
        raw = await fail_closed(self._redis.hgetall(keys.segment_index(tenant)))
        return sorted((dict(orjson.loads(v)) for v in raw.values()), key=lambda r: str(r["name"]))

    async def members(self, tenant: str, segment: str) -> list[str]:
        assigned = await fail_closed(self._redis.hgetall(keys.segment_members(tenant)))
        return sorted(u.decode() for u, s in assigned.items() if s.decode() == segment)

    async def member_counts(self, tenant: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for segment in (await fail_closed(self._redis.hvals(keys.segment_members(tenant)))) or []:
            counts[segment.decode()] = counts.get(segment.decode(), 0) + 1
        return counts

    async def delete(self, tenant: str, segment: str) -> bool:
        """The segment, its persona line and its members' assignments."""
        found = [
            k async for k in self._redis.scan_iter(match=keys.segment_pattern(tenant, segment), count=500)
        ]
        members = await self.members(tenant, segment)
        # every key here shares the tenant's segments slot; no MULTI (a cluster pipeline has none):
        # a delete cut short is finished by asking again
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(keys.segment_index(tenant), segment)
        if found:
            pipe.delete(*found)
        if members:
            pipe.hdel(keys.segment_members(tenant), *members)
        removed, *_ = await fail_closed(pipe.execute())
        return bool(removed)

    async def assign(self, tenant: str, user: str, segment: str) -> None:
        await fail_closed(self._redis.hset(keys.segment_members(tenant), user, segment))

    async def assign_many(self, tenant: str, assignments: dict[str, str]) -> None:
        if assignments:
            await fail_closed(self._redis.hset(keys.segment_members(tenant), mapping=assignments))

    async def assigned(self, tenant: str, user: str) -> str | None:
        raw: Any = await fail_closed(self._redis.hget(keys.segment_members(tenant), user))
        return bytes(raw).decode() if raw else None

    async def unassign(self, tenant: str, user: str) -> bool:
        return bool(await fail_closed(self._redis.hdel(keys.segment_members(tenant), user)))
