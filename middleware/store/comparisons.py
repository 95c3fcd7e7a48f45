"""Pending comparisons and best-only sessions in Redis.

    pm:{t:u}:comparisons:<id>         the pending comparison (JSON, TTL)
    pm:{t:u}:comparisons:<id>:claim   a short lock held while its judgement is written
    pm:{t:u}:comparisons:<id>:judged  marker (TTL) so a second judgement is a clear 409
    pm:comparison-owner:<id>          "tenant:user", to find a comparison by its id alone
    pm:{t:u}:sessions:<id>            a List of the session's messages (best answers only)

Judging is claim -> write records (PreferenceStore, idempotent ids) -> finalize. Finalize deletes the
pending comparison, sets the judged marker, releases the claim and appends the turn to the session in
one script, so a comparison is judged once and a session never gets half a turn.
"""

from __future__ import annotations

from collections.abc import Awaitable
from enum import StrEnum
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from middleware.store import keys
from middleware.store.guard import fail_closed
from middleware.store.scripts import DELETE_IF_EQUAL

CLAIM_TTL_MS = 30_000

_CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'judged' end
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[1]) then return 'ok' end
return 'busy'
"""

# KEYS: comparison, judged, claim, session, meta.
# ARGV: token, judged json, ttl s, has session, expected session length, judgement new, messages...
_FINALIZE = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('DEL', KEYS[3])
if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[5], 'judgements', 1) end
local appended = 0
if ARGV[4] == '1' then
  if redis.call('LLEN', KEYS[4]) == tonumber(ARGV[5]) then
    for i = 7, #ARGV do redis.call('RPUSH', KEYS[4], ARGV[i]) end
    appended = 1
  end
  redis.call('EXPIRE', KEYS[4], ARGV[3])
end
return appended
"""


class Claim(StrEnum):
    OK = "ok"
    MISSING = "missing"
    JUDGED = "judged"
    BUSY = "busy"


class ComparisonStore:
    def __init__(self, redis: Redis, *, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(DELETE_IF_EQUAL)
        self._finalize = redis.register_script(_FINALIZE)

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    # --- pending comparisons ------------------------------------------------------------------------
    async def save(self, tenant: str, user: str, comparison_id: str, data: dict[str, Any]) -> bool:
        """Store a new comparison; False (nothing changed) when one with this id is stored already,
        so a retried creation under the same idempotency key never replaces the first one."""
        # Two slots (owner index and the user's tag): a plain pipeline, owner first (the owner's value
        # is the same for every write of this id).
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.comparison_owner(comparison_id), f"{tenant}:{user}", ex=self._ttl_s)
        pipe.set(keys.comparison(tenant, user, comparison_id), orjson.dumps(data), ex=self._ttl_s, nx=True)
        _, created = await fail_closed(pipe.execute())
        return bool(created)

    async def lookup(self, tenant: str, user: str, comparison_id: str) -> tuple[dict[str, Any] | None, bool]:
        """(the pending comparison or None, whether it has been judged): one round trip, one slot."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keys.comparison(tenant, user, comparison_id))
        pipe.exists(keys.comparison_judged(tenant, user, comparison_id))
        raw, judged = await fail_closed(pipe.execute())
        return (orjson.loads(raw) if raw else None), bool(judged)

    async def owner(self, comparison_id: str) -> tuple[str, str] | None:
        raw = await fail_closed(self._redis.get(keys.comparison_owner(comparison_id)))
        if not raw:
            return None
        tenant, _, user = raw.decode().partition(":")
        return tenant, user

    async def load(self, tenant: str, user: str, comparison_id: str) -> dict[str, Any] | None:
        raw = await fail_closed(self._redis.get(keys.comparison(tenant, user, comparison_id)))
        return orjson.loads(raw) if raw else None

    async def claim(self, tenant: str, user: str, comparison_id: str, token: str) -> Claim:
        result = await fail_closed(
            self._claim(
                keys=[
                    keys.comparison(tenant, user, comparison_id),
                    keys.comparison_judged(tenant, user, comparison_id),
                    keys.comparison_claim(tenant, user, comparison_id),
                ],
                args=[CLAIM_TTL_MS, token],
            )
        )
        return Claim(result.decode() if isinstance(result, bytes) else str(result))

    async def release(self, tenant: str, user: str, comparison_id: str, token: str) -> None:
        await fail_closed(
            self._release(keys=[keys.comparison_claim(tenant, user, comparison_id)], args=[token])
        )

    async def finalize(
        self,
        tenant: str,
        user: str,
        comparison_id: str,
        token: str,
        *,
        judged: dict[str, Any],
        judgement_new: bool,
        session_id: str | None,
        expected_session_len: int,
        append: list[dict[str, Any]],
    ) -> int:
        """1: the session got the turn; 0: no session or it moved on; -1: the claim was lost."""
        session_key = (
            keys.session(tenant, user, session_id)
            if session_id
            else keys.comparison(tenant, user, comparison_id)
        )
        args: list[Any] = [
            token,
            orjson.dumps(judged),
            self._ttl_s,
            "1" if session_id else "0",
            expected_session_len,
            "1" if judgement_new else "0",
            *[orjson.dumps(m) for m in append],
        ]
        result = await fail_closed(
            self._finalize(
                keys=[
                    keys.comparison(tenant, user, comparison_id),
                    keys.comparison_judged(tenant, user, comparison_id),
                    keys.comparison_claim(tenant, user, comparison_id),
                    session_key,
                    keys.user_meta(tenant, user),
                ],
                args=args,
            )
        )
        if int(result) >= 0:
            await fail_closed(self._redis.expire(keys.comparison_owner(comparison_id), self._ttl_s))
        return int(result)

    # --- sessions -----------------------------------------------------------------------------------
    async def session_messages(self, tenant: str, user: str, session_id: str) -> list[dict[str, Any]]:
        pending = self._redis.lrange(keys.session(tenant, user, session_id), 0, -1)
        raw = await fail_closed(cast(Awaitable[list[bytes]], pending))
        return [orjson.loads(m) for m in raw]

    async def judgement_count(self, tenant: str, user: str) -> int:
        pending = self._redis.hget(keys.user_meta(tenant, user), "judgements")
        value = await fail_closed(cast(Awaitable[bytes | None], pending))
        return int(value or 0)
