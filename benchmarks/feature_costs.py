"""What each production feature costs on the chat hot path, measured in one run.

    .venv/bin/python benchmarks/feature_costs.py [--runs 5] [--seconds 3]

One redis-server, the fake upstream and one proxy process per configuration. Each row is a
configuration (settings) and a caller (which persona the call resolves to); every run measures
every row once, in a rotating order, so a busy machine weighs on each alike:

- p50 at c=1 (wrk), and the added p50: the median of the differences to the bare row's slice of
  the same run (paired, so the machine's drift between runs cancels);
- req/s at c=16 and the proxy's CPU time per request (steadier than latency on a shared machine).

Rows: bare (own persona with exemplars, no limits, no feedback records); feedback records; every
rate limit on; context routing (a user with 10 context personas, routed by the last user turn); a
segment persona (a user without one of their own, resolved to the segment's); everything on (limits,
feedback records, the routed user). Metrics are on in every row (they cannot be switched off).
Prints the table and writes it as JSON under benchmarks/out/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
from litellm_proxy import OUT
from proxy_overhead import (
    BODY,
    EXEMPLAR,
    LIMITS_ON,
    PERSONA,
    SEGMENT_BODY,
    plant_contexts,
    put_segment_persona,
)

ROUTED_BODY = {**BODY, "user": "bench-ctx"}
CONFIGS = {
    "bare": {"feedback_records": "false"},
    "feedback": {"feedback_records": "true"},
    "limits": {"feedback_records": "false", "limits": json.dumps(LIMITS_ON)},
    "all": {"feedback_records": "true", "limits": json.dumps(LIMITS_ON)},
}
# row -> (configuration, body)
ROWS = {
    "bare (own persona)": ("bare", BODY),
    "+ feedback records": ("feedback", BODY),
    "+ every rate limit": ("limits", BODY),
    "+ context routing (10 contexts)": ("bare", ROUTED_BODY),
    "segment persona instead of own": ("bare", SEGMENT_BODY),
    "everything on": ("all", ROUTED_BODY),
}


def prepare(proxy: str, redis_url: str) -> None:
    for user in ("bench-user", "bench-ctx"):
        h.put_persona(proxy, user, PERSONA, [EXEMPLAR, EXEMPLAR])
    plant_contexts(redis_url, "bench-ctx")
    put_segment_persona(proxy)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    names = list(ROWS)
    p50: dict[str, list[float]] = {name: [] for name in names}
    rps: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with h.redis() as redis, h.fake_upstream() as upstream, contextlib.ExitStack() as stack:
        urls = {
            name: stack.enter_context(h.proxy(redis.url, upstream, **env)) for name, env in CONFIGS.items()
        }
        prepare(urls["bare"], redis.url)
        with httpx.Client(headers={"Authorization": f"Bearer {h.APP_KEY}"}) as client:
            for name, (config, body) in ROWS.items():
                answer = client.post(f"{urls[config]}/v1/chat/completions", json=body)
                answer.raise_for_status()
                print(
                    f"{name}: x-persona-source {answer.headers['x-persona-source']}, "
                    f"x-persona-context {answer.headers['x-persona-context']}"
                )
        for config, body in ROWS.values():  # warm-up
            h.wrk(f"{urls[config]}/v1/chat/completions", body, connections=args.connections, seconds=1)
        for run in range(args.runs):
            order = names[run % len(names) :] + names[: run % len(names)]
            for name in order:
                config, body = ROWS[name]
                url = f"{urls[config]}/v1/chat/completions"
                loaded = h.wrk_cpu(url, body, connections=args.connections, seconds=args.seconds)
                cpu[name].append(loaded["cpu_ms"])
                rps[name].append(loaded["rps"])
                single = h.wrk(url, body, connections=1, seconds=args.seconds)
                if loaded["non_2xx"] or single["non_2xx"]:
                    raise SystemExit(f"{name}: non-2xx answers")
                p50[name].append(single["p50_ms"])
    base = p50["bare (own persona)"]
    rows = []
    print(
        f"\n{args.runs} runs x {args.seconds:.0f} s per row and load, rotating order (wrk -t1); median (min-max)"
    )
    print(
        f"{'row':<34}{'p50 c=1 ms':>11}{'added µs (paired)':>19}{'spread':>14}"
        f"{'req/s c=' + str(args.connections):>12}{'spread':>13}{'CPU ms/req':>11}"
    )
    for name in names:
        paired = [1000.0 * (v - b) for v, b in zip(p50[name], base, strict=True)]
        row = {
            "row": name,
            "p50_ms": statistics.median(p50[name]),
            "added_us": statistics.median(paired),
            "added_us_spread": [min(paired), max(paired)],
            "rps": statistics.median(rps[name]),
            "rps_spread": [min(rps[name]), max(rps[name])],
            "cpu_ms_per_request": statistics.median(cpu[name]),
        }
        rows.append(row)
        print(
            f"{name:<34}{row['p50_ms']:>11.3f}{row['added_us']:>19.0f}"
            f"{f'{min(paired):.0f}..{max(paired):.0f}':>14}{row['rps']:>12.0f}{f'{min(rps[name]):.0f}-{max(rps[name]):.0f}':>13}"
            f"{row['cpu_ms_per_request']:>11.3f}"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"feature_costs-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"runs": args.runs, "seconds": args.seconds, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
