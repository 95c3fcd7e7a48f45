"""Run any ASGI app under uvicorn in a background thread on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import uvicorn

from tests.support.lifecycle import Started


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvicorn[standard] ships it
        return "asyncio"
    return "uvloop"


class ServerThread(Started):
    """Serve ``app`` on 127.0.0.1 in a daemon thread.

    The listening socket is bound before the thread starts (port 0 unless ``port`` is given),
    so ``port``/``base_url`` are known immediately and there is no port race.
    ``start()`` returns once uvicorn has finished start-up (lifespan included).
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lifespan: str = "on",
        startup_timeout: float = 15.0,
        graceful_shutdown_timeout: float = 1.0,
        **uvicorn_kwargs: Any,
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self.port = port
        self.lifespan = lifespan
        self.startup_timeout = startup_timeout
        self.graceful_shutdown_timeout = graceful_shutdown_timeout
        self.uvicorn_kwargs = uvicorn_kwargs
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> ServerThread:
        if self.running:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        sock.listen(2048)
        sock.set_inheritable(True)
        self._sock = sock
        self.port = sock.getsockname()[1]
        kwargs: dict[str, Any] = {
            "loop": _loop_name(),
            "http": "httptools",
            "ws": "none",
            "lifespan": self.lifespan,
            "access_log": False,
            "log_level": "warning",
            "log_config": None,
            "timeout_graceful_shutdown": self.graceful_shutdown_timeout,
            "timeout_keep_alive": 30,
        }
        kwargs.update(self.uvicorn_kwargs)
        config = uvicorn.Config(self.app, **kwargs)
        self._server = uvicorn.Server(config)
        self._error = None
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._cleanup_socket()
                raise RuntimeError(f"server on port {self.port} failed to start") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server on port {self.port} did not start in {self.startup_timeout}s")
            time.sleep(0.005)
        return self

    def _run(self) -> None:
        assert self._server is not None and self._sock is not None
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # SystemExit from uvicorn on start-up failure included
            self._error = exc

    def stop(self, timeout: float = 10.0) -> None:
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout)
        self._thread = None
        self._server = None
        self._cleanup_socket()

    def _cleanup_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
