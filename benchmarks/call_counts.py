"""Function calls per chat call, per production feature: a cost that does not move with the machine.

    .venv/bin/python benchmarks/call_counts.py [--calls 200] [--rounds 5] [--root DIR]

The rows of `feature_costs.py` (bare, feedback records, every rate limit, context routing with a
small and a full-size router, a segment's persona, everything on), each through the proxy's app in
this process (ASGI called directly; a private redis-server and the fake upstream in their own
processes), not streamed, on uvloop as the server runs. For each row, after a warm-up,
`sys.setprofile` counts what one call runs: Python function calls (each entry into a Python frame,
a coroutine's or generator's resumption included) and calls of built-in (C) functions; the median of
the rounds is printed (work done once per few calls, such as a flush shared by several answers,
leaves a few calls of difference between rounds). Timings on a shared machine move by a quarter
from one hour to the next; the built-in counts move by less than one call, the Python counts by up
to ten in about 300, so a feature or a change that adds work to the hot path shows here however busy
the machine is, and `--root DIR` counts another checkout (a baseline: `git archive REV | tar -x -C DIR`) for a before/after without pairing
runs. A count is not a time (calls differ in cost): this says whether the work changed,
`feature_costs.py` what it costs. Prints the table and writes it as JSON under benchmarks/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


async def counted(call: Callable[[], Awaitable[int]], calls: int) -> tuple[float, float]:
    """(Python calls, C calls) per call over `calls` sequential calls, each of which must answer 200."""
    counts = {"call": 0, "c_call": 0}

    def profile(_frame: object, event: str, _arg: object) -> None:
        if event in counts:
            counts[event] += 1

    statuses: set[int] = set()
    sys.setprofile(profile)
    try:
        for _ in range(calls):
            statuses.add(await call())
    finally:
        sys.setprofile(None)
    assert statuses == {200}, statuses
    return counts["call"] / calls, counts["c_call"] / calls


def settings_of(environ: dict[str, str]) -> Any:
    """The Settings `persona serve` would build with these variables (and no other PERSONA_ ones)."""
    from middleware.config import Settings

    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("PERSONA_")]:
        del os.environ[name]
    os.environ.update(environ)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def measure(
    redis_url: str, upstream: str, calls: int, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    """Per row, each round's (Python calls, C calls) per call."""
    import _harness as h
    import feature_costs as fc

    from middleware.app import create_app

    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {h.APP_KEY}".encode())]
    results: dict[str, list[tuple[float, float]]] = {}
    for config, env in fc.CONFIGS.items():
        settings = settings_of(h.proxy_environ(redis_url, upstream, **env))
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            for row, (row_config, body) in fc.ROWS.items():
                if row_config == config:
                    call = h.asgi_post(app, "/v1/chat/completions", headers, json.dumps(body).encode())
                    await counted(call, 50)  # warm-up: caches filled, connections made
                    results[row] = [await counted(call, calls) for _ in range(rounds)]
    return {row: results[row] for row in fc.ROWS}


def medians(rounds: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(py for py, _ in rounds), statistics.median(c for _, c in rounds)


def report(results: dict[str, list[tuple[float, float]]], root: Path, calls: int) -> None:
    bare_py, bare_c = medians(results["bare (own persona)"])
    rounds = len(results["bare (own persona)"])
    print(
        f"\nfunction calls per chat call, app of {root}: median (min-max) of {rounds} rounds of {calls} "
        "sequential calls"
    )
    print(
        f"{'row':<36}{'Python calls':>14}{'spread':>14}{'added':>8}{'C calls':>10}{'spread':>14}{'added':>8}"
    )
    for row, measured in results.items():
        py, c = medians(measured)
        py_spread = f"{min(p for p, _ in measured):.1f}-{max(p for p, _ in measured):.1f}"
        c_spread = f"{min(c for _, c in measured):.1f}-{max(c for _, c in measured):.1f}"
        print(
            f"{row:<36}{py:>14.1f}{py_spread:>14}{py - bare_py:>+8.1f}{c:>10.1f}{c_spread:>14}{c - bare_c:>+8.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200, help="calls counted per row and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per row (the median is printed)")
    parser.add_argument("--root", type=Path, default=HERE.parent, help="the checkout whose app is counted")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import _harness as h  # (puts this checkout first on the path)
    import feature_costs as fc
    import uvloop
    from litellm_proxy import OUT

    root = args.root.resolve()
    sys.path.insert(0, str(root))  # the measured checkout's package, before this one's

    with h.redis() as redis, h.fake_upstream() as upstream, h.proxy(redis.url, upstream) as proxy:
        fc.prepare(proxy, redis.url)  # the rows' personas, contexts and segment, as feature_costs stores them
        results = uvloop.run(measure(redis.url, upstream, args.calls, args.rounds))  # the server's loop
    report(results, root, args.calls)
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"call_counts-{time.strftime('%Y%m%d-%H%M%S')}.json"
    rows = [
        {
            "row": row,
            "python_calls": medians(measured)[0],
            "c_calls": medians(measured)[1],
            "rounds": [{"python_calls": py, "c_calls": c} for py, c in measured],
        }
        for row, measured in results.items()
    ]
    out.write_text(
        json.dumps({"root": str(root), "calls": args.calls, "rounds": args.rounds, "rows": rows}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
