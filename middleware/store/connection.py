"""The Redis connection: one server, a Sentinel group or a Redis Cluster, chosen by the URL.

    redis://[user:password@]host:port/db          one server (rediss:// for TLS)
    redis+sentinel://[user:password@]host:port[,host:port...]/<master>[/db]
                                                  the master of a Sentinel group (rediss+sentinel://)
    redis+cluster://[user:password@]host:port[,host:port...]
                                                  a Redis Cluster, any of its nodes (rediss+cluster://)

Query options: `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs` (TLS), and for Sentinel
`sentinel_username` / `sentinel_password` when the sentinels themselves ask for a password (the
user and password of the URL are those of the data nodes). Every client has explicit connect and
socket timeouts and a bounded number of connections (per node on a cluster). The clients are
redis-py's own: `Redis` on a `BlockingConnectionPool`, `Sentinel.master_for`, `RedisCluster`.

The job queue (arq) cannot use a cluster (its transactions span a job's keys and the queue's, see
docs/SCALING.md): `Settings` refuses a cluster URL for `PERSONA_JOBS_REDIS_URL`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisClusterException

from middleware.config import Settings
from middleware.store.guard import STORE_ERRORS
from middleware.store.lane import RedisLane, attach, lane_of

Topology = Literal["standalone", "sentinel", "cluster"]
_SCHEMES: dict[str, tuple[Topology, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


class RedisUrlError(ValueError):
    """A Redis URL this service cannot use (said at start-up, with the reason)."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names."""

    topology: Topology
    nodes: list[tuple[str, int]]
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0
    master: str | None = None  # Sentinel: the monitored master's name
    options: dict[str, str] = field(default_factory=dict)


def parse_redis_url(url: str) -> RedisTarget:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise RedisUrlError(f"unsupported Redis URL scheme {scheme!r}: use one of {', '.join(_SCHEMES)}")
    topology, tls = _SCHEMES[scheme.lower()]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user_part, colon, password_part = credentials.partition(":")
        username = unquote(user_part) or None
        password = unquote(password_part) if colon else None
        if not colon:  # redis://secret@host: a password alone
            username, password = None, unquote(user_part)
    nodes = [_host_port(h) for h in hosts.split(",") if h]
    if not nodes:
        raise RedisUrlError(f"no host in the Redis URL {scheme}://…")
    if topology == "standalone" and len(nodes) > 1:
        raise RedisUrlError("several hosts need redis+sentinel:// or redis+cluster://")
    options = dict(parse_qsl(query))
    parts = [p for p in path.split("/") if p]
    master = None
    if topology == "sentinel":
        if not parts:
            raise RedisUrlError("a Sentinel URL names the master: redis+sentinel://host:port,…/<master>")
        master, parts = unquote(parts[0]), parts[1:]
    db = 0
    if parts:
        if len(parts) > 1 or not parts[0].isdigit():
            raise RedisUrlError(f"unexpected path in the Redis URL: /{path}")
        db = int(parts[0])
    if topology == "cluster" and db:
        raise RedisUrlError("a Redis Cluster has only database 0")
    return RedisTarget(topology, nodes, tls, username, password, db, master, options)


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        return host, int(port or 6379)
    except ValueError:
        raise RedisUrlError(f"bad port in the Redis URL host {text!r}") from None


def _connection_kwargs(settings: Settings, target: RedisTarget) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": settings.redis_socket_timeout_s,
        "retry_on_timeout": False,
        "username": target.username,
        "password": target.password,
    }
    if target.tls:
        kwargs.update({k: v for k, v in target.options.items() if k in _TLS_OPTIONS})
    return kwargs


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The Sentinel-managed pool, waiting up to `timeout` for a free connection like the standalone
    one instead of failing at once when all are in use."""


class _FailoverSafePipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except AttributeError as exc:
            # redis-py 5.3, after a failed command while a failover has left the client no default
            # node, reads that node's name off None: a store fault like any other (a 503, or fail open)
            raise RedisClusterException(f"the cluster pipeline failed mid-failover: {exc!r}") from exc


class _Cluster(RedisCluster):
    """redis-py's cluster client whose pipelines fail as the store fails (`_FailoverSafePipeline`)."""

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        super().pipeline(transaction, shard_hint)  # redis-py's refusal of MULTI and shard hints
        return _FailoverSafePipeline(self)  # type: ignore[abstract]  # as redis-py makes its own


def create_redis(settings: Settings, url: str | None = None, *, caller_timeouts: bool = False) -> Redis:
    """The client for `url` (default: `PERSONA_REDIS_URL`).

    `caller_timeouts`: no socket timeout on replies, for a client whose every command runs under its
    caller's own `asyncio.timeout` (the hot path's reads, the write-behind): redis-py would otherwise
    arm and cancel a timer for each reply of a pipeline, a tenth of the proxy's CPU per call."""
    target = parse_redis_url(url or settings.redis_url)
    kwargs = _connection_kwargs(settings, target)
    if caller_timeouts:
        kwargs["socket_timeout"] = None
    if target.topology == "cluster":
        cluster = _Cluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            max_connections=settings.redis_max_connections,
            ssl=target.tls,
            # A dead master's slots move to its replica within the failover window; keep asking the
            # cluster for the new owners instead of failing for good.
            require_full_coverage=False,
            **{k: v for k, v in kwargs.items() if k != "retry_on_timeout"},
        )
        # RedisCluster speaks the same command API the stores use (tests/test_cluster_store.py runs
        # every store against a real cluster); typed as Redis so the stores take either.
        return cast(Redis, cluster)
    if target.topology == "sentinel":
        assert target.master is not None
        tls = {"ssl": True, **{k: v for k, v in kwargs.items() if k in _TLS_OPTIONS}} if target.tls else {}
        sentinel_auth = {
            k.removeprefix("sentinel_"): v
            for k, v in target.options.items()
            if k in ("sentinel_username", "sentinel_password")
        }
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            target.nodes,
            sentinel_kwargs={
                "socket_connect_timeout": settings.redis_connect_timeout_s,
                "socket_timeout": settings.redis_socket_timeout_s,
                **tls,
                **sentinel_auth,
            },
            **kwargs,
            **({"ssl": True} if target.tls else {}),
            db=target.db,
        )
        return cast(
            Redis,
            sentinel.master_for(
                target.master,
                connection_pool_class=_BlockingSentinelPool,
                max_connections=settings.redis_max_connections,
                timeout=settings.redis_connect_timeout_s,
            ),
        )
    pool = BlockingConnectionPool.from_url(
        url or settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_connect_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=kwargs["socket_timeout"],
        retry_on_timeout=False,
    )
    client = Redis(connection_pool=pool)
    if caller_timeouts and pool.connection_class is Connection:  # plain TCP: the hot path's lane
        options = pool.connection_kwargs
        attach(
            client,
            RedisLane(
                options.get("host", "localhost"),
                int(options.get("port", 6379)),
                username=options.get("username"),
                password=options.get("password"),
                db=int(options.get("db") or 0),
                connect_timeout_s=settings.redis_connect_timeout_s,
                stall_s=settings.redis_socket_timeout_s,
            ),
        )
    return client


async def close_redis(client: Redis) -> None:
    """Close a client made by `create_redis`, and its lane if it has one."""
    lane = lane_of(client)
    if lane is not None:
        lane.close()
    await client.aclose()


def jobs_redis_url(settings: Settings) -> str:
    """The job queue's Redis: `PERSONA_JOBS_REDIS_URL`, else the service's own."""
    return settings.jobs_redis_url or settings.redis_url


def create_jobs_redis(settings: Settings, main: Redis | None = None) -> Redis:
    """The job queue's client; `main` itself when the queue shares the service's Redis."""
    url = jobs_redis_url(settings)  # never a cluster: Settings refuses one
    if main is not None and url == settings.redis_url:
        return main
    return create_redis(settings, url)


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


def one_slot_pipeline(redis: Redis) -> Any:
    """A pipeline of commands on keys of one hash slot: MULTI/EXEC on a single server or Sentinel
    group; on a cluster (whose pipelines have no MULTI) the commands go in order to the slot's master,
    each atomic by itself. Used only where a reader seeing the commands land one by one is harmless
    (docs/SCALING.md)."""
    return redis.pipeline(transaction=not is_cluster(redis))


async def reachable(redis: Redis, timeout_s: float = 1.0) -> bool:
    """Does Redis answer a PING within `timeout_s`?"""
    try:
        await asyncio.wait_for(redis.ping(), timeout=timeout_s)
    except (TimeoutError, *STORE_ERRORS):
        return False
    return True


@asynccontextmanager
async def redis_client(settings: Settings, url: str | None = None) -> AsyncIterator[Redis]:
    """A client for one command-line run, closed afterwards."""
    redis = create_redis(settings, url)
    try:
        yield redis
    finally:
        await redis.aclose()
