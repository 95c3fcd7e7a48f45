"""Writes that promise to survive a failover: the write, then `WAIT` on the same connection.

Redis replicates asynchronously: a master killed right after it answered may take a write with it.
`WAIT n ms` (sent on the connection that wrote, which is what it waits for) returns once `n`
replicas have everything that connection wrote. The writes that get this guarantee, and what an
answer means for each, are listed in docs/SCALING.md ("Which writes survive a failover").
"""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from middleware.errors import StoreUnavailable
from middleware.store.guard import STORE_ERRORS, fail_closed, resolved, unavailable

NOT_REPLICATED = (
    "the store (Redis) took the write but no replica confirmed it within {ms} ms, so a failover now "
    "could lose it; retrying the same request is safe (nothing is stored twice)"
)


class Replication:
    """How many replicas a durable write waits for, and for how long (0 replicas: no waiting)."""

    def __init__(self, replicas: int = 0, timeout_ms: int = 500) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms

    async def script(self, redis: Redis, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        """EVALSHA `script` and, in the same round trip and on the same connection, WAIT.

        Raises StoreUnavailable (503) when Redis fails or too few replicas confirm in time. `keys`
        share one hash slot; the WAIT goes to the node that holds it.
        """
        node = None
        if self.replicas > 0 and isinstance(redis, RedisCluster):
            cluster = cast(RedisCluster, redis)
            await fail_closed(cluster.initialize())  # the slot map (a no-op once known)
            node = cluster.get_node_from_key(keys[0])
        for attempt in (1, 2):
            pipe = redis.pipeline(transaction=False)
            # execute_command: redis-py's cluster pipeline blocks its evalsha() method, not the command
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            if self.replicas > 0:
                wait_args = ("WAIT", self.replicas, self.timeout_ms)
                if node is not None:  # a cluster: the node that holds the keys, not a default one
                    pipe.execute_command(*wait_args, target_nodes=node)
                else:
                    pipe.execute_command(*wait_args)
            try:
                results = await pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                await fail_closed(resolved(redis.script_load(script.script)))  # once per node
                continue
            except STORE_ERRORS as exc:
                raise unavailable(exc) from exc
            if self.replicas > 0 and int(results[-1]) < self.replicas:
                raise StoreUnavailable(NOT_REPLICATED.format(ms=self.timeout_ms))
            return results[0]
        raise AssertionError("unreachable")  # pragma: no cover
