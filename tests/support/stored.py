"""Reading back what the proxy stored, straight from Redis (for assertions)."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from middleware.store import keys


def stored_records(redis_url: str, tenant: str, user: str) -> list[dict[str, Any]]:
    """The data of every record in the user's preference stream, oldest first."""
    r = redis.Redis.from_url(redis_url)
    try:
        return [orjson.loads(f[b"data"]) for _, f in r.xrange(keys.prefs(tenant, user))]  # type: ignore[union-attr]
    finally:
        r.close()
