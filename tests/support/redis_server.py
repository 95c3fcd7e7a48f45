"""A real, private ``redis-server`` process for tests (never the shared one on port 6379)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.lifecycle import Started, stop_process
from tests.support.ports import SHARED_REDIS_PORT, free_port

_SEARCH_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/bin", "/opt/homebrew/bin")


def find_redis_server() -> str:
    """Path of the ``redis-server`` binary (PATH first, then the usual system folders)."""
    found = shutil.which("redis-server")
    if found:
        return found
    for folder in _SEARCH_DIRS:
        candidate = Path(folder) / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError(
        "redis-server not found (run scripts/bootstrap.sh, or apt-get install redis-server)"
    )


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when the server answers ``PING`` with ``+PONG`` (``-LOADING`` counts as not ready)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(Started):
    """``redis-server`` on a free loopback port with its own temporary directory.

    ``appendonly=True`` turns on the AOF with ``appendfsync everysec`` so that ``kill()`` then
    ``restart()`` replays it (at most about one second of writes lost).
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        if port == SHARED_REDIS_PORT:
            raise ValueError("port 6379 belongs to the shared Redis; tests use their own port")
        self.host = host
        self.port = port or free_port(host)
        self._port_fixed = port is not None
        self.appendonly = appendonly
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self.binary = find_redis_server()
        self.dir = Path(tempfile.mkdtemp(prefix="persona-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    # -- addresses ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def url_for_db(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle ----------------------------------------------------------------------------
    def _command(self) -> list[str]:
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path),
            "--loglevel",
            "warning",
            "--databases",
            "16",
        ]
        if self.appendonly:
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd + self.extra_args

    def start(self) -> RedisServer:
        if self.running:
            return self
        attempts = 3
        for attempt in range(attempts):
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.paused = False
            if self._wait_ready():
                return self
            self._reap()
            # the port may have been taken between choosing and binding; pick another
            # (only when the caller did not ask for this exact port, i.e. not on restart)
            if attempt + 1 < attempts and not self._port_fixed:
                self.port = free_port(self.host)
        raise RuntimeError(f"redis-server did not start on port {self.port}: {self._log_tail()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if ping(self.host, self.port):
                return True
            time.sleep(0.02)
        return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def _reap(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def _signal(self, sig: int) -> None:
        if not self.running:
            raise RuntimeError("redis-server is not running")
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync (the crash a durability test wants)."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
        self._reap()
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing is answered."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        self._signal(signal.SIGCONT)
        self.paused = False

    @contextmanager
    def while_paused(self) -> Iterator[None]:
        """``pause()`` for the ``with`` block, ``resume()`` after it however it ends."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def restart(self) -> RedisServer:
        """Start again on the same port and directory (so an AOF is replayed). Kills first if running."""
        if self.running:
            if self.paused:
                self.resume()
            self.kill()
        fixed_before, self._port_fixed = self._port_fixed, True
        try:
            # the old socket may linger briefly; the start loop retries on the same port
            deadline = time.monotonic() + 5.0
            while True:
                try:
                    return self.start()
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            self._port_fixed = fixed_before

    def stop(self) -> None:
        """Terminate the server and delete its directory."""
        if self.running:
            assert self.proc is not None
            if self.paused:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.paused = False
            stop_process(self.proc, timeout=5.0)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("running" if self.running else "stopped")
        return f"RedisServer(port={self.port}, appendonly={self.appendonly}, {state})"
