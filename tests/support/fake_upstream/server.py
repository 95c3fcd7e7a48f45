"""FakeUpstream: the app served from a thread for tests; ``main``: its own process for benchmarks."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from tests.support.fake_upstream.app import make_app
from tests.support.fake_upstream.models import RecordedRequest, Reply, Responder
from tests.support.lifecycle import Started
from tests.support.server_thread import ServerThread
from tests.support.waiting import await_until, wait_until


class FakeUpstream(Started):
    """The fake served from a background thread on 127.0.0.1 (a free port)."""

    def __init__(self, *, port: int = 0, default_delay: float = 0.0) -> None:
        self.app = make_app(default_delay=default_delay)
        self._server = ServerThread(self.app, port=port, lifespan="on", graceful_shutdown_timeout=0.5)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        return self._server.base_url

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what an OpenAI client or litellm ``api_base`` wants."""
        return f"{self._server.base_url}/v1"

    # -- behaviour ----------------------------------------------------------------------------
    @property
    def responder(self) -> Responder | None:
        return self.app.responder

    @responder.setter
    def responder(self, fn: Responder | None) -> None:
        self.app.responder = fn

    @property
    def default_delay(self) -> float:
        return self.app.default_delay

    @default_delay.setter
    def default_delay(self, seconds: float) -> None:
        self.app.default_delay = seconds

    def script(self, *replies: Reply) -> None:
        """Queue replies, consumed in order by the next ``/v1/chat/completions`` calls."""
        self.app.script(*replies)

    def reset(self) -> None:
        """Forget recorded requests, the queued script, the responder and any default delay."""
        self.app.reset()
        self.app.default_delay = 0.0

    # -- observations -------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far (the records themselves are live)."""
        return self.app.requests

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.app.requests if r.path.endswith("/chat/completions")]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
        """Poll ``predicate`` until true or ``timeout``; returns its last value."""
        return wait_until(predicate, timeout, interval)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        self.wait_for(lambda: len(self.app.requests) >= n, timeout)
        return self.requests

    async def await_for(
        self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01
    ) -> bool:
        """``wait_for`` for async tests (does not block the event loop)."""
        return await await_until(predicate, timeout, interval)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from tests.support import fake_upstream

    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fake_upstream",
        description=fake_upstream.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before every answer")
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args(argv)
    # its own process (the benchmarks'): delays exact to the microsecond
    app = make_app(record=False, default_delay=args.delay_ms / 1000.0, exact_delays=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=args.backlog,
        timeout_keep_alive=60,
    )
