"""The proxy beside the upstream alone and (with `--with-litellm`) LiteLLM's own proxy, in one run.

For each path (chat completions and the Responses API, persona with exemplars injected) and each
server, several alternating rounds of: req/s, p50 and p99 at c=16 (wrk -t1), p50 at c=1, and the
time to the first byte of a stream whose upstream answers after a fixed delay. Printed as medians with
their spread, and written as JSON and PNG under `benchmarks/out/` (git-ignored).

Targets: >= 3,000 req/s at c=16 with one process and >= 30x LiteLLM's proxy;
added p50 at c=1 <= 0.5 ms; p99 at c=16 <= 10 ms; stream time to first byte added <= 0.5 ms.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import _harness as h
import ttfb
from litellm_proxy import OUT, litellm_proxy

STREAM_DELAY_MS = 20.0


def run(
    paths: tuple[tuple[str, str, dict[str, Any]], ...],
    persona: tuple[str, list[dict[str, Any]]],
    *,
    runs: int,
    seconds: float,
    connections: int,
    with_litellm: bool,
    workers: int = 1,
    settings: dict[str, str] | None = None,
    prepare: Callable[[str, str], None] | None = None,
    floor: bool = False,
) -> dict[str, Any]:
    """`workers` > 1: `persona serve --workers N` measured too, as the row `proxy xN`. Every proxy
    runs with `settings` (PERSONA_ settings); `prepare(proxy_url, redis_url)` stores what the
    bodies' users need beyond their own persona. `floor`: `floor_proxy.py` (the least a Python proxy
    with a persona does) measured too, as the row `floor`, its stream time to first byte as well."""
    settings = settings or {}
    with ExitStack() as stack:
        redis = stack.enter_context(h.redis())
        upstream = stack.enter_context(h.fake_upstream())
        slow_upstream = stack.enter_context(h.fake_upstream(delay_ms=STREAM_DELAY_MS))
        proxy = stack.enter_context(h.proxy(redis.url, upstream, **settings))
        slow_proxy = stack.enter_context(h.proxy(redis.url, slow_upstream, **settings))
        for user in sorted({str(body["user"]) for _, _, body in paths}):
            h.put_persona(proxy, user, *persona)
        if prepare is not None:
            prepare(proxy, redis.url)
        servers = {"upstream": upstream, "proxy": f"{proxy}/v1"}
        if workers > 1:
            servers[f"proxy x{workers}"] = (
                f"{stack.enter_context(h.proxy(redis.url, upstream, workers=workers, **settings))}/v1"
            )
        slow = {"proxy": f"{slow_proxy}/v1"}
        if floor:
            personas = {str(body["user"]): persona[0] for _, _, body in paths}
            servers["floor"] = f"{stack.enter_context(h.floor_proxy(redis.port, upstream, personas))}/v1"
            slow["floor"] = f"{stack.enter_context(h.floor_proxy(redis.port, slow_upstream, personas))}/v1"
        if with_litellm:
            servers["litellm"] = f"{stack.enter_context(litellm_proxy(upstream))}/v1"
        result = measure(servers, paths, slow_upstream, slow, runs, seconds, connections)
        result["settings"] = settings
        return result


def measure(
    servers: dict[str, str],
    paths: tuple[tuple[str, str, dict[str, Any]], ...],
    slow_upstream: str,
    slow_proxies: dict[str, str],
    runs: int,
    seconds: float,
    connections: int,
) -> dict[str, Any]:
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}
    for label, path, body in paths:
        for base in servers.values():
            h.wrk(f"{base}{path}", body, connections=connections, seconds=1)  # warm-up
        rows[label] = {s: {"rps": [], "p50_ms": [], "p99_ms": [], "c1_p50_ms": []} for s in servers}
    for _ in range(runs):
        for label, path, body in paths:
            for server, base in servers.items():
                loaded = h.wrk(f"{base}{path}", body, connections=connections, seconds=seconds)
                if loaded["non_2xx"]:
                    raise SystemExit(f"{server} {label}: {loaded['non_2xx']:.0f} non-2xx answers")
                single = h.wrk(f"{base}{path}", body, connections=1, seconds=seconds / 2)
                row = rows[label][server]
                row["rps"].append(loaded["rps"])
                row["p50_ms"].append(loaded["p50_ms"])
                row["p99_ms"].append(loaded["p99_ms"])
                row["c1_p50_ms"].append(single["p50_ms"])
    first_byte = {
        f"{label} {server}" if server != "proxy" else label: ttfb.added_ttfb(
            f"{slow_upstream}{path}", f"{slow}{path}", {**body, "stream": True}, runs=runs, count=100
        )
        for label, path, body in paths
        for server, slow in slow_proxies.items()
    }
    return {
        "runs": runs,
        "seconds": seconds,
        "connections": connections,
        "rows": rows,
        "ttfb_added_ms": first_byte,
    }


def report(result: dict[str, Any]) -> None:
    rows, c = result["rows"], result["connections"]
    print(
        f"\nside by side, {result['runs']} alternating runs x {result['seconds']:.0f} s, wrk -t1 (median, spread)"
    )
    print(
        f"{'path':<18}{'server':<10}{f'req/s c={c}':>12}{'spread':>14}{'p50 ms':>9}{'p99 ms':>9}{'spread':>14}{'c=1 p50':>9}"
    )
    for label, servers in rows.items():
        for server, m in servers.items():
            print(
                f"{label:<18}{server:<10}{statistics.median(m['rps']):>12.0f}"
                f"{h.spread(m['rps'], 0):>14}{statistics.median(m['p50_ms']):>9.2f}"
                f"{statistics.median(m['p99_ms']):>9.2f}{h.spread(m['p99_ms']):>14}{statistics.median(m['c1_p50_ms']):>9.3f}"
            )
    print()
    for label, servers in rows.items():
        ours = servers["proxy"]
        rps = statistics.median(ours["rps"])
        added = [p - d for p, d in zip(ours["c1_p50_ms"], servers["upstream"]["c1_p50_ms"], strict=True)]
        p99 = statistics.median(ours["p99_ms"])
        line = (
            f"{label}: {rps:.0f} req/s ({'met' if rps >= 3000 else 'NOT met'}: >= 3000); "
            f"added p50 c=1 {statistics.median(added):.3f} ms, spread {h.spread(added)} "
            f"({'met' if statistics.median(added) <= 0.5 else 'NOT met'}: <= 0.5); "
            f"p99 c={c} {p99:.2f} ms ({'met' if p99 <= 10 else 'NOT met'}: <= 10)"
        )
        for server, m in servers.items():
            if server.startswith("proxy x"):
                scaling = [w / max(o, 1e-9) for w, o in zip(m["rps"], ours["rps"], strict=True)]
                print(
                    f"{label}: {server}: {statistics.median(m['rps']):.0f} req/s, "
                    f"{statistics.median(scaling):.2f}x one process (spread {h.spread(scaling)})"
                )
        if "litellm" in servers:
            ratios = [
                o / max(theirs, 1e-9)
                for o, theirs in zip(ours["rps"], servers["litellm"]["rps"], strict=True)
            ]
            ratio = statistics.median(ratios)
            line += f"; {ratio:.1f}x LiteLLM, spread {h.spread(ratios)} ({'met' if ratio >= 30 else 'NOT met'}: >= 30x)"
        print(line)
        first = result["ttfb_added_ms"][label]
        print(
            f"{label}, stream: time to first byte added {statistics.median(first):.3f} ms, spread {h.spread(first)} "
            f"({'met' if statistics.median(first) <= 0.5 else 'NOT met'}: <= 0.5)"
        )
        if "floor" in servers:
            floor = servers["floor"]
            floor_added = [
                p - d for p, d in zip(floor["c1_p50_ms"], servers["upstream"]["c1_p50_ms"], strict=True)
            ]
            floor_first = result["ttfb_added_ms"][f"{label} floor"]
            print(
                f"{label}: the floor (floor_proxy.py): {statistics.median(floor['rps']):.0f} req/s, "
                f"added p50 c=1 {statistics.median(floor_added):.3f} ms, p99 c={c} "
                f"{statistics.median(floor['p99_ms']):.2f} ms, stream time to first byte added "
                f"{statistics.median(floor_first):.3f} ms (spread {h.spread(floor_first)})"
            )


def save(result: dict[str, Any], name: str = "proxy_overhead") -> None:
    """JSON with every run, and a PNG: req/s and p50/p99 per path and server."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = list(rows)
    servers = list(next(iter(rows.values())))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(servers)
    for i, server in enumerate(servers):
        xs = [j + i * width for j in range(len(labels))]
        left.bar(xs, [statistics.median(rows[path][server]["rps"]) for path in labels], width, label=server)
        right.bar(
            xs,
            [statistics.median(rows[path][server]["p50_ms"]) for path in labels],
            width,
            label=f"{server} p50",
        )
        right.scatter(
            xs,
            [statistics.median(rows[path][server]["p99_ms"]) for path in labels],
            marker="_",
            s=200,
            color="black",
        )
    for ax, title in (
        (left, f"req/s at c={result['connections']}"),
        (right, "latency ms (bar p50, tick p99)"),
    ):
        ax.set_xticks([j + width * (len(servers) - 1) / 2 for j in range(len(labels))], labels)
        ax.set_title(title)
        ax.legend()
    right.set_yscale("log")
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=110)
    print(f"wrote {OUT / f'{name}.json'} and {OUT / f'{name}.png'}")
