"""A real Redis Cluster (3 masters + 3 replicas) and a real Sentinel group (1 master, 1 replica,
3 sentinels) on free loopback ports in temporary folders, for the tests that need them.

Every wait is for a condition, bounded by a deadline (no fixed sleeps).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from tests.support.lifecycle import Started, stop_process
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer, find_redis_server, ping
from tests.support.waiting import wait_until

NODE_TIMEOUT_MS = 2000
# A replica's first full copy starts at once (the default waits 5 s for more replicas to join).
FAST_SYNC = ["--repl-diskless-sync-delay", "0"]


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """`wait_until`, a Redis error counting as not yet; TimeoutError at the deadline."""

    def holds() -> bool:
        try:
            return condition()
        except (redis.RedisError, OSError):
            return False

    if not wait_until(holds, timeout, interval):
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def _client(server: RedisServer | Sentinel, password: str | None = None) -> redis.Redis:
    """A client of one server (callers close it: `with closing(_client(...))`)."""
    return redis.Redis(
        host=server.host, port=server.port, password=password, socket_timeout=2, socket_connect_timeout=1
    )


def _info(server: RedisServer, section: str, password: str | None = None) -> dict[str, object]:
    with closing(_client(server, password)) as client:
        info: dict[str, object] = client.info(section)  # type: ignore[assignment]
        return info


def _replica_online(master: RedisServer, password: str | None = None) -> bool:
    """The master has a replica that finished its first copy (WAIT can count it)."""
    replication = _info(master, "replication", password)
    replica = replication.get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


class LocalCluster(Started):
    """Six `redis-server --cluster-enabled yes` nodes joined by `redis-cli --cluster create`."""

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 1,
        password: str | None = None,
        tls: Path | None = None,
    ) -> None:
        """`tls`: a folder with ca.crt, server.crt and server.key (see `make_certificates`); each node
        then also listens with TLS (its bus and replication too), beside its plain port."""
        self.password = password
        self.tls = tls
        self.tls_ports: list[int] = []
        self.count = masters * (1 + replicas_per_master)
        self.replicas_per_master = replicas_per_master
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in self.nodes[:3])

    @property
    def tls_url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.tls_ports[:3])
        return f"rediss+cluster://{hosts}?ssl_ca_certs={self.tls}/ca.crt"

    def start(self) -> LocalCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()  # no node outlives a failed start
            raise

    def _start(self) -> LocalCluster:
        cli = shutil.which("redis-cli") or str(Path(find_redis_server()).with_name("redis-cli"))
        for _ in range(self.count):
            extra = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                # an explicit bus port: the default (port + 10000) fails above port 55535
                "--cluster-port", str(free_port()),
                *FAST_SYNC,
            ]  # fmt: skip
            if self.tls is not None:
                self.tls_ports.append(free_port())
                extra += [
                    "--tls-port", str(self.tls_ports[-1]), "--tls-cluster", "yes", "--tls-replication", "yes",
                    "--tls-cert-file", str(self.tls / "server.crt"), "--tls-key-file", str(self.tls / "server.key"),
                    "--tls-ca-cert-file", str(self.tls / "ca.crt"), "--tls-auth-clients", "no",
                ]  # fmt: skip
            node = RedisServer(extra_args=extra).start()
            self.nodes.append(node)
            if self.password:  # set once up (the readiness check pings without a password)
                with closing(_client(node)) as client:
                    client.config_set("masterauth", self.password)
                    client.config_set("requirepass", self.password)
        addresses = [f"{n.host}:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, *(["-a", self.password, "--no-auth-warning"] if self.password else []),
             "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas_per_master),
             "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )  # fmt: skip
        wait_for(self.healthy, 30, "the cluster to be ok with every replica in sync")
        return self

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running]

    def masters(self) -> list[RedisServer]:
        return [n for n in self.live() if _info(n, "replication", self.password)["role"] == "master"]

    def healthy(self) -> bool:
        """Every live node sees the cluster ok, each master has a replica in sync."""
        for node in self.live():
            with closing(_client(node, self.password)) as client:
                if client.execute_command("CLUSTER INFO")["cluster_state"] != "ok":  # type: ignore[no-untyped-call]
                    return False
        masters = self.masters()
        if len(masters) != self.count // (1 + self.replicas_per_master):
            return False
        return all(_replica_online(m, self.password) for m in masters)

    def master_of(self, key: str) -> RedisServer:
        """The live node that serves `key`'s slot as master (asked of the cluster itself)."""
        slot = key_slot(key.encode())
        with closing(_client(self.live()[0], self.password)) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):  # type: ignore[no-untyped-call]
                if int(start) <= slot <= int(end):
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no master for slot {slot}")

    def flush(self) -> None:
        for node in self.masters():
            with closing(_client(node, self.password)) as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def make_certificates(folder: Path) -> Path:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl), in `folder`."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=persona-test-ca",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (folder / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext")  # fmt: skip
    return folder


class Sentinel:
    """One `redis-server --sentinel` process with its own config file."""

    def __init__(self, master_port: int, master_name: str, down_after_ms: int) -> None:
        self.host, self.port = "127.0.0.1", free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="persona-sentinel-"))
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} 10000\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )
        self.proc = subprocess.Popen(
            [find_redis_server(), str(conf), "--sentinel"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: ping("127.0.0.1", self.port), 10, f"sentinel on {self.port}")

    def stop(self) -> None:
        stop_process(self.proc, timeout=5.0)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelGroup(Started):
    """A master, its replica and three sentinels watching them (quorum 2)."""

    def __init__(self, master_name: str = "persona", down_after_ms: int = 1000) -> None:
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.servers: list[RedisServer] = []
        self.sentinels: list[Sentinel] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}"

    def start(self) -> SentinelGroup:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> SentinelGroup:
        master = RedisServer(extra_args=FAST_SYNC).start()
        self.servers.append(master)
        replica = RedisServer(extra_args=["--replicaof", master.host, str(master.port), *FAST_SYNC]).start()
        self.servers.append(replica)
        wait_for(lambda: _replica_online(master), 20, "the replica's first copy")
        for _ in range(3):
            self.sentinels.append(Sentinel(master.port, self.master_name, self.down_after_ms))
        wait_for(self._sentinels_agree, 20, "the sentinels to see each other and the replica")
        return self

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            with closing(_client(sentinel)) as client:
                state = client.sentinel_master(self.master_name)  # type: ignore[no-untyped-call]
            if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                return False
        return True

    def master(self) -> RedisServer:
        """The server the sentinels name as master now."""
        with closing(_client(self.sentinels[0])) as client:
            _, port = client.sentinel_get_master_addr_by_name(self.master_name)  # type: ignore[no-untyped-call]
        return next(s for s in self.servers if s.port == int(port))

    def flush(self) -> None:
        with closing(_client(self.master())) as client:
            client.flushall()

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()


# --- fixtures (registered in tests/conftest.py) ----------------------------------------------------
@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[LocalCluster]:
    """A 3-master, 3-replica cluster shared by one test module (use `cluster_url` for a flushed one)."""
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
def fresh_cluster() -> Iterator[LocalCluster]:
    """A cluster of this test's own (safe to kill nodes of)."""
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture
def fresh_sentinel_group() -> Iterator[SentinelGroup]:
    """A Sentinel group of this test's own (safe to kill its master)."""
    with SentinelGroup() as group:
        yield group
