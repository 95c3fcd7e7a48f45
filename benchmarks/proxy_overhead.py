"""Throughput and added latency of the proxy with persona injection, against the upstream direct.

Fake OpenAI-compatible upstream on loopback (separate process), the proxy as `persona serve` with one
worker (separate process), wrk as the load generator. Each configuration runs several times,
alternating, and the median is reported.

    .venv/bin/python benchmarks/proxy_overhead.py [--runs 5] [--seconds 6] [--connections 16]

Targets (issue): >= 1,000 req/s through the proxy with persona injection at concurrency 16, and
p50 added latency <= 2 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

BODY = {
    "model": "fake-model",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant for the ACME store."},
        {"role": "user", "content": "Which running shoes would you recommend for a beginner?"},
    ],
    "user": "bench-user",
}
PERSONA = (
    "Values brevity and concrete recommendations over general advice. Prefers answers that name "
    "specific products with one-line reasons, dislikes marketing language, and appreciates a short "
    "caveat when evidence is thin."
)
EXEMPLAR = {
    "context": [{"role": "user", "content": "Best budget laptop?"}],
    "chosen": {"role": "assistant", "content": "ThinkPad E14: solid keyboard, easy repairs."},
    "rejected": {"role": "assistant", "content": "There are many great laptops out there to consider..."},
}


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()

    with h.redis() as redis, h.fake_upstream() as upstream, h.proxy(redis.url, upstream) as proxy:
        h.put_persona(proxy, "bench-user", PERSONA, [EXEMPLAR, EXEMPLAR])
        direct_url, proxy_url = f"{upstream}/chat/completions", f"{proxy}/v1/chat/completions"
        h.wrk(proxy_url, BODY, connections=args.connections, seconds=2)  # warm-up
        results: dict[str, list[dict[str, float]]] = {
            "direct": [],
            "proxy": [],
            "direct_c1": [],
            "proxy_c1": [],
        }
        for _ in range(args.runs):
            results["direct"].append(
                h.wrk(direct_url, BODY, connections=args.connections, seconds=args.seconds)
            )
            results["proxy"].append(
                h.wrk(proxy_url, BODY, connections=args.connections, seconds=args.seconds)
            )
            results["direct_c1"].append(h.wrk(direct_url, BODY, connections=1, seconds=args.seconds / 2))
            results["proxy_c1"].append(h.wrk(proxy_url, BODY, connections=1, seconds=args.seconds / 2))

    errors = sum(r["non_2xx"] for runs in results.values() for r in runs)
    print(
        f"{args.runs} runs x {args.seconds:.0f} s, wrk -t1, median of runs; non-2xx responses: {errors:.0f}"
    )
    print(f"{'path':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, label in (
        ("direct", f"direct upstream, c={args.connections}"),
        ("proxy", f"proxy + persona, c={args.connections}"),
        ("direct_c1", "direct upstream, c=1"),
        ("proxy_c1", "proxy + persona, c=1"),
    ):
        runs = results[name]
        print(
            f"{label:<28}{median(runs, 'rps'):>10.0f}{median(runs, 'p50_ms'):>10.3f}{median(runs, 'p99_ms'):>10.3f}"
        )
    added_p50 = median(results["proxy"], "p50_ms") - median(results["direct"], "p50_ms")
    added_c1 = median(results["proxy_c1"], "p50_ms") - median(results["direct_c1"], "p50_ms")
    ratio = median(results["proxy"], "rps") / median(results["direct"], "rps")
    print(f"proxy/direct throughput ratio: {ratio:.3f}")
    print(f"added p50 latency at c={args.connections}: {added_p50:.3f} ms; at c=1: {added_c1:.3f} ms")
    ok = median(results["proxy"], "rps") >= 1000 and added_p50 <= 2.0
    print(f"target (>= 1000 req/s, added p50 <= 2 ms): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
