"""Time to first byte of a stream, direct against the upstream and through the proxy.

The fake upstream answers after a fixed delay (`--delay-ms`), so the first byte of the body comes at
delay + transport; the difference between the proxy and the direct call is what the proxy adds before
the app sees anything. Sequential calls (c=1) on one kept-alive connection each.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import _harness as h
import httpx


def first_byte_ms(url: str, body: dict[str, Any], count: int) -> list[float]:
    """Milliseconds from sending each of `count` stream requests to its first body byte."""
    times: list[float] = []
    with httpx.Client(headers={"Authorization": f"Bearer {h.APP_KEY}"}, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            with client.stream("POST", url, json=body) as response:
                response.raise_for_status()
                first = True
                for chunk in response.iter_raw():
                    if chunk and first:
                        times.append((time.perf_counter() - started) * 1000.0)
                        first = False
    return times


def added_ttfb(direct: str, proxied: str, body: dict[str, Any], *, runs: int, count: int) -> list[float]:
    """Per run: median proxied TTFB minus median direct TTFB, alternating the two within each run."""
    first_byte_ms(proxied, body, 20)  # warm-up
    added = []
    for _ in range(runs):
        d = statistics.median(first_byte_ms(direct, body, count))
        p = statistics.median(first_byte_ms(proxied, body, count))
        added.append(p - d)
    return added
