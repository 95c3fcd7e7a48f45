"""Free loopback ports for the servers that tests and benchmarks start."""

from __future__ import annotations

import socket

SHARED_REDIS_PORT = 6379  # the machine's own Redis: never handed out


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick), never the shared Redis's."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port != SHARED_REDIS_PORT:
            return port
