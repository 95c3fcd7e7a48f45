"""Waiting for a condition, bounded by a deadline (a test watches for what it waits on instead of
sleeping a fixed time)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; whether it held (asked once more
    at the deadline)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return bool(condition())
        time.sleep(interval)
    return True


async def await_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """`wait_until` for async tests (the event loop runs while it waits)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return bool(condition())
        await asyncio.sleep(interval)
    return True
