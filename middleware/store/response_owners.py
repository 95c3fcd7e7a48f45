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


class ResponseOwner(NamedTuple):
    tenant: str
    # False: nothing was added to `instructions`. True: the app's text is the first `app_chars`
    # characters, or the app sent none (`app_chars` None).
    personalized: bool
    app_chars: int | None


class ResponseOwners:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    async def record(self, response_id: str, owner: ResponseOwner) -> None:
        value = orjson.dumps({"t": owner.tenant, "p": owner.personalized, "n": owner.app_chars})
        await fail_closed(self._redis.set(keys.response_owner(response_id), value, ex=self._ttl_s))

    async def owner(self, response_id: str) -> ResponseOwner | None:
        raw = await fail_closed(self._redis.get(keys.response_owner(response_id)))
        if raw is None:
            return None
        found = orjson.loads(raw)
        return ResponseOwner(str(found["t"]), bool(found["p"]), found.get("n"))

    async def forget(self, response_id: str) -> None:
        await fail_closed(self._redis.delete(keys.response_owner(response_id)))
