"""Start a local redis-server for `persona serve` when none is reachable (development default).

Data is kept under `<data_dir>/redis` with the durability settings we recommend for the data
instance: append-only file, fsync every second, no eviction.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}


def reachable(url: str, timeout: float = 0.5) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout):
            return True
    except OSError:
        return False


def start_local_redis(url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    """Start redis-server on the URL's loopback port; returns the process (caller stops it)."""
    parsed = urlparse(url)
    if (parsed.hostname or "") not in LOCAL_HOSTS:
        raise RuntimeError(f"Redis at {url} is not reachable, and it is not local: start it first")
    binary = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None
    )
    if binary is None:
        raise RuntimeError("no Redis reachable and no redis-server installed (apt-get install redis-server)")
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(parsed.port or 6379),
            "--dir",
            str(redis_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--logfile",
            "redis.log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if reachable(url, 0.2):
            return process
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}; see {redis_dir}/redis.log")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start within 10 s")


@contextmanager
def redis_available(url: str, data_dir: Path, *, allowed: bool = True) -> Iterator[None]:
    """Make sure Redis answers at `url` for the duration: start a local one if needed and allowed
    (saying so on stderr), and stop it afterwards."""
    process = None
    if urlparse(url).scheme not in ("redis", "rediss"):  # a Sentinel group or a cluster: never embedded
        allowed = False
    if allowed and not reachable(url):
        process = start_local_redis(url, data_dir)
        print(
            f"No Redis at {url}: started a local redis-server with data in {data_dir}/redis", file=sys.stderr
        )
    try:
        yield
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
