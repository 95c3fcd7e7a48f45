"""Which tenant created each Responses API response id, and how to hide the persona in it later.

Every tenant shares the proxy's upstream account, so a stored response is reachable by anyone who
knows its id upstream. The proxy records the creating tenant (others get 404) and how many characters
of the stored `instructions` were the app's own, so a later retrieve shows the app its own text.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson
from redis.asyncio import Redis

from middleware.store import keys
from middleware.store.guard import fail_closed
from middleware.store.pipelines import Command
from middleware.store.write_behind import WriteBehind


class ResponseOwner(NamedTuple):
    tenant: str
    # False: nothing was added to `instructions`. True: the app's text is the first `app_chars`
    # characters, or the app sent none (`app_chars` None).
    personalized: bool
    app_chars: int | None


class ResponseOwners:
    def __init__(self, redis: Redis, ttl_s: int, write_behind: WriteBehind | None = None) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._write_behind = write_behind or WriteBehind(redis)
        self._waiting: list[Command] = []

    def record_later(self, response_id: str, owner: ResponseOwner) -> None:
        """Record the owner behind the answer (`store/write_behind.py`): it reaches Redis as the answer
        leaves, before the app can ask for the response again; `owner` waits for it in this process."""
        self._waiting.append(("SET", keys.response_owner(response_id), _value(owner), "EX", self._ttl_s))
        self._write_behind.soon(self._take)

    def _take(self) -> list[Command]:
        waiting, self._waiting = self._waiting, []
        return waiting

    async def owner(self, response_id: str) -> ResponseOwner | None:
        key = keys.response_owner(response_id)
        # a record of this process may still be on its way
        raw = await self._write_behind.read_through(lambda: fail_closed(self._redis.get(key)))
        if raw is None:
            return None
        found = orjson.loads(raw)
        return ResponseOwner(str(found["t"]), bool(found["p"]), found.get("n"))

    async def forget(self, response_id: str) -> None:
        await fail_closed(self._redis.delete(keys.response_owner(response_id)))


def _value(owner: ResponseOwner) -> bytes:
    return orjson.dumps({"t": owner.tenant, "p": owner.personalized, "n": owner.app_chars})
