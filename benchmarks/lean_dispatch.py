"""CPU per call of the layers in front of the chat-like routes: the lean dispatch (api/fast_path.py)
against the FastAPI stack alone, in one process, alternating.

The ASGI app is called directly (no server, no sockets, no Redis, no upstream) with calls that end in
the prelude (`chatlike.admit`) with an error answer: the same endpoint work on both sides, so the
difference is what the layers in front cost. CPU time of the process (`time.process_time`), steadier
than wall time on a loaded machine.

    .venv/bin/python benchmarks/lean_dispatch.py [--runs 7] [--calls 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from middleware.app import create_app
from middleware.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

from tests.jobs_support import store_services

ROUTES = ("/v1/chat/completions", "/v1/responses", "/v1/messages")
KEY = (b"authorization", b"Bearer sk-bench")
JSON = (b"content-type", b"application/json")
OFF = (b"x-persona-mode", b"off")  # no user, no limits: no Redis in the call, only the upstream
CASES = {
    "ok, mode off": (
        [JSON, KEY, OFF],
        {
            "/v1/chat/completions": b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}',
            "/v1/responses": b'{"model": "fake-model", "input": "hi"}',
        },
    ),
    "no key (401)": ([JSON], dict.fromkeys(ROUTES, b'{"model": "m", "messages": []}')),
    "bad mode (400)": ([JSON, KEY, (b"x-persona-mode", b"loud")], dict.fromkeys(ROUTES, b'{"model": "m"}')),
}


async def calls(app: Any, path: str, headers: list[tuple[bytes, bytes]], body: bytes, count: int) -> float:
    """CPU milliseconds per call over `count` calls (all answered alike)."""
    cpu_ms, statuses = await h.asgi_cpu_ms(app, path, headers, body, count)
    assert len(statuses) == 1, statuses
    return cpu_ms


async def main(runs: int, count: int) -> None:
    with h.fake_upstream() as upstream:
        await compare(upstream, runs, count)


async def compare(upstream: str, runs: int, count: int) -> None:
    settings = Settings(
        api_keys={"sk-bench": "bench"},
        embedded_redis=False,
        upstream_api_base=upstream,
        upstream_api_key="sk-x",
    )
    lean = create_app(settings)
    full = create_app(settings)
    full.build_middleware_stack = lambda: FastAPI.build_middleware_stack(full)  # type: ignore[method-assign]
    apps = {"FastAPI stack": full, "lean dispatch": lean}
    async with store_services(settings) as services:  # no call here reaches Redis or the upstream
        for app in apps.values():
            app.state.services = services
        await measure(apps, runs, count)


async def measure(apps: dict[str, Any], runs: int, count: int) -> None:
    print(f"CPU ms per call, {runs} runs x {count} calls (median, spread min-max)")
    for label, (headers, bodies) in CASES.items():
        for path, body in bodies.items():
            measured: dict[str, list[float]] = {name: [] for name in apps}
            for app in apps.values():
                await calls(app, path, headers, body, count // 10)  # warm-up
            for _ in range(runs):
                for name, app in apps.items():
                    measured[name].append(await calls(app, path, headers, body, count))
            full_ms, lean_ms = (statistics.median(measured[name]) for name in apps)
            spreads = "  ".join(f"{name} {min(v):.4f}-{max(v):.4f}" for name, v in measured.items())
            print(
                f"{label:<16}{path:<22} FastAPI {full_ms:.4f}  lean {lean_ms:.4f}  "
                f"saved {1000 * (full_ms - lean_ms):.1f} us ({100 * (1 - lean_ms / full_ms):.0f}%)  [{spreads}]"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.calls))
