"""What each production feature costs on the chat hot path, measured in one run.

    .venv/bin/python benchmarks/feature_costs.py [--runs 5] [--seconds 3] [--against DIR]

One redis-server, the fake upstream and one proxy process per configuration. Each row is a
configuration (settings) and a caller (which persona the call resolves to); every run measures
every row once, in a rotating order, so a busy machine weighs on each alike:

- p50 at c=1 (wrk), and the added p50: the median of the differences to the bare row's slice of
  the same run (paired, so the machine's drift between runs cancels);
- req/s at c=16 and the proxy's CPU time per request (steadier than latency on a shared machine).

Rows: bare (own persona with exemplars, no limits, no feedback records); feedback records; every
rate limit on; context routing (a user with 10 context personas, routed by the last user turn, with
a small router, and with one of full size: `proxy_overhead.plant_contexts`); a segment persona (a
user without one of their own, resolved to the segment's); everything on (limits, feedback records,
the routed user with the small router). Metrics are on in every row (they cannot be switched off).
With `--against DIR`, every row is measured from that checkout too (a baseline in the same run: its
proxies beside this checkout's, on the same Redis and upstream) and the ratios are printed. Prints
the table and writes it as JSON under benchmarks/out/.
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
FULL_ROUTER_BODY = {**BODY, "user": "bench-ctx-full"}
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
    "+ routing, full-size router": ("bare", FULL_ROUTER_BODY),
    "segment persona instead of own": ("bare", SEGMENT_BODY),
    "everything on": ("all", ROUTED_BODY),
}


def prepare(proxy: str, redis_url: str) -> None:
    for user in ("bench-user", "bench-ctx", "bench-ctx-full"):
        h.put_persona(proxy, user, PERSONA, [EXEMPLAR, EXEMPLAR])
    plant_contexts(redis_url, "bench-ctx")
    plant_contexts(redis_url, "bench-ctx-full", full_router=True)
    put_segment_persona(proxy)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--against",
        type=Path,
        help="another checkout (e.g. `git archive REV | tar -x -C DIR`): every row measured from it "
        "too, in the same run, against the same Redis and upstream",
    )
    args = parser.parse_args()
    roots = {"": h.ROOT} if args.against is None else {"": h.ROOT, " [baseline]": args.against.resolve()}
    # a measured row: (row, checkout label)
    names = [(row, label) for row in ROWS for label in roots]
    p50: dict[tuple[str, str], list[float]] = {name: [] for name in names}
    rps: dict[tuple[str, str], list[float]] = {name: [] for name in names}
    cpu: dict[tuple[str, str], list[float]] = {name: [] for name in names}
    with h.redis() as redis, h.fake_upstream() as upstream, contextlib.ExitStack() as stack:
        urls = {
            (config, label): stack.enter_context(h.proxy(redis.url, upstream, root, **env))
            for config, env in CONFIGS.items()
            for label, root in roots.items()
        }
        # the data goes in through a proxy of its own: each measured proxy serves its rows alone
        prepare(stack.enter_context(h.proxy(redis.url, upstream)), redis.url)
        with httpx.Client(headers={"Authorization": f"Bearer {h.APP_KEY}"}) as client:
            for row, label in names:
                config, body = ROWS[row]
                answer = client.post(f"{urls[config, label]}/v1/chat/completions", json=body)
                answer.raise_for_status()
                print(
                    f"{row}{label}: x-persona-source {answer.headers['x-persona-source']}, "
                    f"x-persona-context {answer.headers['x-persona-context']}"
                )
        for row, label in names:  # warm-up
            config, body = ROWS[row]
            h.wrk(f"{urls[config, label]}/v1/chat/completions", body, connections=args.connections, seconds=1)
        for run in range(args.runs):
            order = names[run % len(names) :] + names[: run % len(names)]
            for name in order:
                config, body = ROWS[name[0]]
                url = f"{urls[config, name[1]]}/v1/chat/completions"
                loaded = h.wrk_cpu(url, body, connections=args.connections, seconds=args.seconds)
                cpu[name].append(loaded["cpu_ms"])
                rps[name].append(loaded["rps"])
                single = h.wrk(url, body, connections=1, seconds=args.seconds)
                if loaded["non_2xx"] or single["non_2xx"]:
                    raise SystemExit(f"{name}: non-2xx answers")
                p50[name].append(single["p50_ms"])
    rows = []
    print(
        f"\n{args.runs} runs x {args.seconds:.0f} s per row and load, rotating order (wrk -t1); median (min-max)"
    )
    print(
        f"{'row':<46}{'p50 c=1 ms':>11}{'added µs (paired)':>19}{'spread':>14}"
        f"{'req/s c=' + str(args.connections):>12}{'spread':>13}{'CPU ms/req':>11}"
    )
    for name in names:
        base = p50["bare (own persona)", name[1]]
        paired = [1000.0 * (v - b) for v, b in zip(p50[name], base, strict=True)]
        row = {
            "row": name[0] + name[1],
            "p50_ms": statistics.median(p50[name]),
            "added_us": statistics.median(paired),
            "added_us_spread": [min(paired), max(paired)],
            "rps": statistics.median(rps[name]),
            "rps_spread": [min(rps[name]), max(rps[name])],
            "cpu_ms_per_request": statistics.median(cpu[name]),
        }
        rows.append(row)
        print(
            f"{row['row']:<46}{row['p50_ms']:>11.3f}{row['added_us']:>19.0f}"
            f"{f'{min(paired):.0f}..{max(paired):.0f}':>14}{row['rps']:>12.0f}{f'{min(rps[name]):.0f}-{max(rps[name]):.0f}':>13}"
            f"{row['cpu_ms_per_request']:>11.3f}"
        )
    if args.against is not None:
        print(
            "\nthis checkout / baseline, per row (req/s ratio, CPU per request ratio, median of the paired runs)"
        )
        for row_name in ROWS:
            now, then = (row_name, ""), (row_name, " [baseline]")
            rps_ratio = statistics.median(a / b for a, b in zip(rps[now], rps[then], strict=True))
            cpu_ratio = statistics.median(a / b for a, b in zip(cpu[now], cpu[then], strict=True))
            print(f"  {row_name:<44} req/s x{rps_ratio:.3f}   CPU/req x{cpu_ratio:.3f}")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"feature_costs-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"runs": args.runs, "seconds": args.seconds, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
