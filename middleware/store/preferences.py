"""The preference log: one Redis Stream per user, the source of truth for induction and training.

Records are added idempotently (a set of stored ids guards the stream) in one Lua script, so a
retried write or a re-import never stores the same judgement twice, and a batch is all-or-nothing.
Each record has a `kind`: `pair` (one preference pair) or `judgement` (a raw best/worst judgement
of a four-way comparison, kept beside the pairs derived from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from middleware.models import PreferencePair
from middleware.store import keys
from middleware.store.durable import Replication
from middleware.store.guard import fail_closed

# KEYS: stream, ids set, meta hash. ARGV: triples (id, kind, json). Returns 1/0 per record.
_ADD_SCRIPT = """
local added = {}
local new_pairs = 0
for i = 1, #ARGV, 3 do
  local id, kind, data = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('SADD', KEYS[2], id) == 1 then
    redis.call('XADD', KEYS[1], '*', 'id', id, 'kind', kind, 'data', data)
    added[#added + 1] = 1
    if kind == 'pair' then new_pairs = new_pairs + 1 end
  else
    added[#added + 1] = 0
  end
end
if new_pairs > 0 then redis.call('HINCRBY', KEYS[3], 'pairs_since_refresh', new_pairs) end
return added
"""


# KEYS: stream, ids set. ARGV: record ids. Each id still stored leaves the set and its entry the stream
# (searched from the newest, in pages, until all are found). Returns the ids removed.
_WITHDRAW_SCRIPT = """
local wanted, left, removed = {}, 0, {}
for i = 1, #ARGV do
  if redis.call('SREM', KEYS[2], ARGV[i]) == 1 then
    wanted[ARGV[i]] = true
    left = left + 1
    removed[#removed + 1] = ARGV[i]
  end
end
local last = '+'
while left > 0 do
  local entries = redis.call('XREVRANGE', KEYS[1], last, '-', 'COUNT', 200)
  if #entries == 0 then break end
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'id' then
        if wanted[fields[j + 1]] then
          redis.call('XDEL', KEYS[1], entry[1])
          wanted[fields[j + 1]] = nil
          left = left - 1
        end
        break
      end
    end
  end
  last = '(' .. entries[#entries][1]
end
return removed
"""


@dataclass(frozen=True)
class Record:
    id: str
    kind: str
    data: dict[str, Any]
    stream_id: str

    def pair(self) -> PreferencePair:
        return PreferencePair.model_validate(self.data)


class PreferenceStore:
    def __init__(self, redis: Redis, replication: Replication | None = None) -> None:
        self._redis = redis
        self._replication = replication or Replication()
        self._add = redis.register_script(_ADD_SCRIPT)
        self._withdraw = redis.register_script(_WITHDRAW_SCRIPT)

    async def add(self, tenant: str, user: str, records: list[tuple[str, str, dict[str, Any]]]) -> list[bool]:
        """Append (id, kind, data) records; returns which ones were new. Fails closed (503), also when
        too few replicas confirm the write in time (a retry stores nothing twice)."""
        if not records:
            return []
        argv: list[str | bytes] = []
        for record_id, kind, data in records:
            argv += [record_id, kind, orjson.dumps(data)]
        flags = await self._replication.script(
            self._redis,
            self._add,
            [keys.prefs(tenant, user), keys.pref_ids(tenant, user), keys.user_meta(tenant, user)],
            argv,
        )
        await fail_closed(self._redis.sadd(keys.tenant_users(tenant), user))
        return [bool(int(f)) for f in flags]

    async def withdraw(self, tenant: str, user: str, record_ids: list[str]) -> list[str]:
        """Remove these records from the log (ids not stored are skipped; an id withdrawn can be
        added again); returns the ids removed. Fails closed (503), like `add`."""
        if not record_ids:
            return []
        removed = await self._replication.script(
            self._redis, self._withdraw, [keys.prefs(tenant, user), keys.pref_ids(tenant, user)], record_ids
        )
        return [r.decode() if isinstance(r, bytes) else str(r) for r in removed]

    async def add_pairs(self, tenant: str, user: str, pairs: list[PreferencePair]) -> list[bool]:
        records = []
        for pair in pairs:
            pair_id = pair.stable_id()
            data = pair.model_copy(update={"id": pair_id, "user_id": user}).model_dump(mode="json")
            records.append((pair_id, "pair", data))
        return await self.add(tenant, user, records)

    async def records(self, tenant: str, user: str, kind: str | None = None) -> list[Record]:
        entries = await fail_closed(self._redis.xrange(keys.prefs(tenant, user)))
        out = []
        for stream_id, fields in entries:
            record = Record(
                id=fields[b"id"].decode(),
                kind=fields[b"kind"].decode(),
                data=orjson.loads(fields[b"data"]),
                stream_id=stream_id.decode(),
            )
            if kind is None or record.kind == kind:
                out.append(record)
        return out

    async def pair_count(self, tenant: str, user: str) -> int:
        """How many of the user's records are pairs (their data is not decoded)."""
        entries = await fail_closed(self._redis.xrange(keys.prefs(tenant, user)))
        return sum(1 for _, fields in entries if fields[b"kind"] == b"pair")

    async def pairs(self, tenant: str, user: str) -> list[PreferencePair]:
        """All of a user's preference pairs, oldest first (stream order)."""
        return [r.pair() for r in await self.records(tenant, user, kind="pair")]

    async def count(self, tenant: str, user: str) -> int:
        return int(await fail_closed(self._redis.xlen(keys.prefs(tenant, user))))

    async def pairs_since_refresh(self, tenant: str, user: str) -> int:
        value = await fail_closed(self._redis.hget(keys.user_meta(tenant, user), "pairs_since_refresh"))
        return int(value or 0)

    async def consume_since_refresh(self, tenant: str, user: str, n: int) -> None:
        """A refresh used `n` new pairs: take them off the count (pairs added meanwhile stay on it)."""
        await fail_closed(self._redis.hincrby(keys.user_meta(tenant, user), "pairs_since_refresh", -n))
