"""CPU per call of chat completions and the Responses API through the proxy's app, in one process,
routes alternating: the persona injected (a user with a persona and two exemplars, as in
benchmarks/proxy_overhead.py), feedback records on, not streamed.

The ASGI app is called directly (no HTTP server, no load generator); Redis is a private redis-server
and the upstream the fake, each in its own process, so the figures are the proxy's own work: the
prelude, the round trips' client side, the answer and the writes behind it. CPU time of this process
(`time.process_time`), the median of the runs: a difference between the routes of a few µs is what
the Responses route adds. `--root DIR` measures the checkout at DIR instead (e.g. a baseline).

    .venv/bin/python benchmarks/route_cpu.py [--runs 7] [--calls 1500] [--root DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

APP_KEY = "sk-bench"
ADMIN_KEY = "sk-bench-admin"
INSTRUCTIONS = "You are a helpful assistant for the ACME store."
QUESTION = "Which running shoes would you recommend for a beginner?"
ROUTES = {
    "chat completions": (
        "/v1/chat/completions",
        {
            "model": "fake-model",
            "messages": [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}],
            "user": "bench-user",
        },
    ),
    "responses": (
        "/v1/responses",
        {"model": "fake-model", "instructions": INSTRUCTIONS, "input": QUESTION, "user": "bench-user"},
    ),
}


async def cpu_us(app: Any, path: str, body: bytes, calls: int) -> float:
    """CPU µs per call over `calls` calls (each must answer 200)."""
    import _harness as h  # imported by `main` first, after this checkout went first on the path

    headers = [(b"content-type", b"application/json"), (b"authorization", b"Bearer " + APP_KEY.encode())]
    cpu_ms, statuses = await h.asgi_cpu_ms(app, path, headers, body, calls)
    assert statuses == {200}, statuses
    return cpu_ms * 1000.0


async def measure(redis_url: str, upstream: str, runs: int, calls: int) -> None:
    import httpx

    from middleware.app import create_app
    from middleware.config import Settings

    print(f"app of {Path(sys.modules['middleware'].__file__ or '').parent.parent}")
    bench = importlib.import_module("proxy_overhead")  # the persona and exemplar of the proxy benchmark
    settings = Settings(
        api_keys={APP_KEY: "bench"},
        admin_key=ADMIN_KEY,  # type: ignore[arg-type]
        embedded_redis=False,
        redis_url=redis_url,
        upstream_api_base=upstream,
        upstream_api_key="sk-upstream",  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as admin:
            stored = await admin.put(
                "/admin/users/bench-user/persona",
                json={"text": bench.PERSONA, "exemplars": [bench.EXEMPLAR, bench.EXEMPLAR]},
                headers={"Authorization": f"Bearer {ADMIN_KEY}", "X-Persona-Tenant": "bench"},
            )
            stored.raise_for_status()
        cases = {label: (path, json.dumps(body).encode()) for label, (path, body) in ROUTES.items()}
        for path, body in cases.values():
            await cpu_us(app, path, body, max(1, calls // 5))  # warm-up
        samples: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(runs):
            for label, (path, body) in cases.items():
                samples[label].append(await cpu_us(app, path, body, calls))
    base = statistics.median(samples["chat completions"])
    print(f"CPU µs per call, median of {runs} runs x {calls} calls, routes alternating")
    for label, values in samples.items():
        us = statistics.median(values)
        print(f"{label:<18}{us:>8.1f}{us - base:>+8.1f}   ({min(values):.1f}-{max(values):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--root", type=Path, default=HERE.parent, help="the checkout whose app is measured")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import _harness as h  # (puts this checkout first on the path)

    sys.path.insert(0, str(args.root.resolve()))  # the measured checkout's package, before it

    with h.redis() as redis, h.fake_upstream() as upstream:
        asyncio.run(measure(redis.url, upstream, args.runs, args.calls))


if __name__ == "__main__":
    main()
