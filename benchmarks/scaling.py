"""Figures for docs/SCALING.md: failover on a cluster and a Sentinel group, memory per user, req/s.

    .venv/bin/python benchmarks/scaling.py failover [--runs 3]
    .venv/bin/python benchmarks/scaling.py memory [--users 8]
    .venv/bin/python benchmarks/scaling.py throughput [--runs 3] [--seconds 5]

failover: tests/support/failover.py's drill (load through the proxy, the user's master killed with
SIGKILL) `--runs` times per topology; prints per run and the median with min-max: the window (kill
to the first answer with persona again), the chat success rate inside it, when preference writes
were acknowledged again, writes acknowledged vs found afterwards, and the refresh job's outcome.

memory: imports /work/shared/data (both files) into a private redis-server, induces a persona for
`--users` users of each file (the suite's fake LLM writes the text; the exemplars are the users' real
pairs), stores an adapter blob of the documented size (about 26 KB, docs/METHOD.md), and sums
`MEMORY USAGE <key> SAMPLES 0` over each user's keys, by kind.

throughput: one `persona serve` process with persona injection at 16 connections (wrk) against a
standalone Redis and against a 3-master cluster, alternating, median with min-max; and one Redis
master's GET rate (the chat path's one command; redis-benchmark, 50 clients).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import redis as redis_client

from middleware.store.ratelimits import ADMIT
from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import LocalCluster, SentinelGroup

DATA = Path(os.environ.get("SHARED_DATA", "/work/shared/data"))
FILES = {"tldr_feedback": "native", "ukp_convarg_dev": "personalrewardbench"}
ADAPTER_BYTES = 26_000


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.3g} (min {min(values):.3g}, max {max(values):.3g}, n={len(values)})"


# --- failover ----------------------------------------------------------------------------------------
def failover(runs: int) -> None:
    from tests.support.failover import cluster_kill, drill, sentinel_kill

    with FakeUpstream() as upstream:
        for topology in ("cluster", "sentinel"):
            summaries = []
            for _ in range(runs):
                with RedisServer() as jobs, contextlib.ExitStack() as stack:
                    if topology == "cluster":
                        cluster = stack.enter_context(LocalCluster())
                        kill, restart = cluster_kill(cluster)
                        url, jobs_url = cluster.url, jobs.url
                    else:
                        group = stack.enter_context(SentinelGroup())
                        kill, restart = sentinel_kill(group)
                        url, jobs_url = group.url, ""
                    figures = asyncio.run(drill(topology, url, jobs_url, upstream, kill, restart))
                summary = figures.summary()
                print(json.dumps(summary), flush=True)
                summaries.append(summary)
            print(f"== {topology}: {runs} runs")
            for name in ("window_s", "chat_success_in_window", "chat_calls_in_window", "writes_back_s"):
                print(f"  {name}: {spread([float(s[name]) for s in summaries if s[name] is not None])}")
            acked = sum(int(s["writes_acknowledged"]) for s in summaries)
            found = sum(int(s["writes_found"]) for s in summaries)
            print(f"  writes acknowledged {acked}, found {found}; refused (503) "
                  f"{sum(int(s['writes_refused_503']) for s in summaries)}")  # fmt: skip
            print(f"  jobs: {[s['job'] for s in summaries]}, attempts {[s['job_attempts'] for s in summaries]}, "
                  f"worker alive {[s['worker_alive'] for s in summaries]}")  # fmt: skip


# --- memory ------------------------------------------------------------------------------------------
def users_of(path: Path, limit: int) -> list[str]:
    counts: dict[str, int] = defaultdict(int)
    with gzip.open(path, "rt") as lines:
        for line in lines:
            counts[json.loads(line)["user_id"]] += 1
    ranked = sorted((u for u, n in counts.items() if n >= 10), key=lambda u: counts[u])
    step = max(1, len(ranked) // limit)
    return ranked[::step][:limit]  # spread over the range of pair counts


async def _fill(settings: Any, users: dict[str, list[str]]) -> None:
    from middleware.preferences.importer import run_import
    from middleware.store import keys
    from tests.jobs_support import store_services

    for name, fmt in FILES.items():
        await run_import(settings, DATA / f"{name}.jsonl.gz", format=fmt, tenant=name, progress=False)
    async with store_services(settings) as services:
        for tenant, ids in users.items():
            for user in ids:
                await services.induction.induce(tenant, user)
                version = (await services.personas.get(tenant, user)).version  # type: ignore[union-attr]
                await services.redis.set(keys.adapter(tenant, user, version), os.urandom(ADAPTER_BYTES))


def kind_of(key: str) -> str:
    rest = key.split("}:", 1)[1]
    if rest.startswith("persona:v") and rest != "persona:versions":
        return "persona version"
    return re.sub(r"[:][^:]*$", "", rest) if rest.startswith(("comparisons", "sessions")) else rest


def memory(n_users: int) -> None:
    from tests.induction_fakes import InductionResponder
    from tests.support.proxy import proxy_settings

    with FakeUpstream() as upstream, RedisServer() as server:
        upstream.responder = InductionResponder()
        users = {name: users_of(DATA / f"{name}.jsonl.gz", n_users) for name in FILES}
        settings = proxy_settings(server.url, upstream, induction_model="fake-judge")
        asyncio.run(_fill(settings, users))
        r = redis_client.Redis.from_url(server.url)
        for tenant, ids in users.items():
            per_user, per_kind, key_counts, pairs = [], defaultdict(list), [], []
            for user in ids:
                found = [k.decode() for k in r.scan_iter(match=f"pm:{{{tenant}:{user}}}:*", count=1000)]
                sizes = {k: int(r.memory_usage(k, samples=0) or 0) for k in found}
                kinds: dict[str, int] = defaultdict(int)
                for key, size in sizes.items():
                    kinds[kind_of(key)] += size
                for kind, size in kinds.items():
                    per_kind[kind].append(size)
                per_user.append(sum(sizes.values()))
                key_counts.append(len(found))
                pairs.append(int(r.xlen(f"pm:{{{tenant}:{user}}}:prefs")))
            index = int(r.memory_usage(f"pm:tenant:{tenant}:users", samples=0) or 0)
            members = int(r.scard(f"pm:tenant:{tenant}:users"))
            print(
                f"== {tenant}: {len(ids)} users with a persona, {statistics.median(pairs):.0f} records (median)"
            )
            print(
                f"  bytes per user: {spread([float(v) for v in per_user])}; keys per user: {spread(key_counts)}"
            )
            print(
                f"  bytes per preference record: {spread([u / p for u, p in zip(per_user, pairs, strict=True)])}"
            )
            for kind, sizes_of_kind in sorted(per_kind.items()):
                print(f"    {kind}: {spread([float(v) for v in sizes_of_kind])}")
            print(f"  tenant user index: {index / max(1, members):.1f} bytes per member")
        info = r.info("memory")
        print(f"used_memory {info['used_memory']} bytes for {r.dbsize()} keys")
        r.close()


# --- throughput --------------------------------------------------------------------------------------
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}], "user": "bench-user"}


def throughput(runs: int, seconds: float) -> None:
    results: dict[str, list[dict[str, float]]] = defaultdict(list)
    with RedisServer() as jobs, LocalCluster() as cluster:
        with h.fake_upstream() as upstream, h.redis() as standalone, contextlib.ExitStack() as stack:
            urls = {
                "standalone": stack.enter_context(h.proxy(standalone.url, upstream)),
                "cluster": stack.enter_context(h.proxy(cluster.url, upstream, jobs_redis_url=jobs.url)),
            }
            for url in urls.values():
                h.put_persona(url, "bench-user", "Prefers short answers.")
            for _ in range(runs):
                for name, url in urls.items():
                    results[name].append(
                        h.wrk(f"{url}/v1/chat/completions", BODY, connections=16, seconds=seconds)
                    )
        for name, rows in results.items():
            print(f"== one proxy process, persona injected, c=16, Redis {name}")
            print(f"  req/s: {spread([r['rps'] for r in rows])}")
            print(
                f"  p50 ms: {spread([r['p50_ms'] for r in rows])}; p99 ms: {spread([r['p99_ms'] for r in rows])}"
            )
            print(f"  non-2xx: {sum(r['non_2xx'] for r in rows):.0f}")
        rates: list[float] = []
        admits: list[float] = []
        with h.redis() as master:  # a master serves its slots like one server (one core)
            for _ in range(runs):
                out = subprocess.run(
                    ["redis-benchmark", "-p", str(master.port), "-t", "get", "-n", "200000", "-c", "50", "-q"],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                rates.append(float(re.search(r"GET: ([\d.]+) requests per second", out).group(1)))  # type: ignore[union-attr]
            # the metered chat path's other command: ADMIT on the tenant's slot (one master per tenant)
            client = redis_client.Redis(port=master.port)
            sha = str(client.script_load(ADMIT))
            client.close()
            admit = [
                "EVALSHA",
                sha,
                "4",
                "{l}:rpm",
                "{l}:u",
                "{l}:in",
                "{l}:tok",
                "1",
                "0",
                "0",
                "0",
                "lease",
            ]
            admit += ["60000", "0", "1000", "60000"]
            for _ in range(runs):
                out = subprocess.run(
                    ["redis-benchmark", "-p", str(master.port), "-n", "100000", "-c", "50", "-q", *admit],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                admits.append(float(re.findall(r"([\d.]+) requests per second", out)[-1]))
        print(f"== one Redis master (one core), GET, 50 clients: {spread(rates)} ops/s")
        print(f"== one Redis master, the admission script (limits off), 50 clients: {spread(admits)} calls/s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("failover", "memory", "throughput"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.what == "failover":
        failover(args.runs)
    elif args.what == "memory":
        memory(args.users)
    else:
        throughput(args.runs, args.seconds)


if __name__ == "__main__":
    main()
