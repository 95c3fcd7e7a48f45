"""Starting and stopping what tests and benchmarks run: servers as context managers, child processes
stopped for sure."""

from __future__ import annotations

import signal
import subprocess
from typing import Any, Self


class Started:
    """``with Thing(...) as thing:`` starts it and stops it on the way out (a subclass defines both)."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def stop_process(process: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send `sig` to a child still running and wait for it to end; SIGKILL if it outlives `timeout`."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
