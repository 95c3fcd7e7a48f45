"""Throughput and added latency of the proxy with persona injection, against the upstream direct.

Fake OpenAI-compatible upstream on loopback (separate process), the proxy as `persona serve` with one
worker (separate process), wrk as the load generator. Each configuration runs several times,
alternating, and the median is reported.

    .venv/bin/python benchmarks/proxy_overhead.py [--runs 5] [--seconds 6] [--connections 16]
    .venv/bin/python benchmarks/proxy_overhead.py --limits [--runs 5] [--seconds 6]
    .venv/bin/python benchmarks/proxy_overhead.py --with-litellm [--runs 5] [--seconds 6]

`--with-litellm` (or `--side-by-side` without it) runs chat completions and the Responses API through
the proxy beside the upstream alone and LiteLLM's own proxy (built once into its own venv under
`benchmarks/out/`), prints the ratio, the targets, stream time to first byte added, and writes JSON +
PNG under `benchmarks/out/` (benchmarks/side_by_side.py). With `--everything` the proxy runs as a
production deployment would: every rate limit on, feedback records written, and the calls made for a
user with 10 context personas (routed by the last user turn).

`--contexts` measures what the context router costs: the same proxy, c=1, alternating, for a user
with a general persona only and a user with a general persona and 10 context personas whose calls are
routed by similarity (no tag: the router's full work); target <= 0.5 ms p50 added.

`--feedback` measures what feedback records cost: the same proxy with PERSONA_FEEDBACK_RECORDS off
(the baseline), on, and on with the texts kept (the stream's text collected as it passes), for chat
completions streamed and not, at c=1, alternating; target <= 0.1 ms p50 added.

`--segments BASELINE_SRC` measures the persona resolution (own > segment > tenant > none) at c=1,
limits on: this checkout's proxy (a user with their own persona, a user with a segment persona)
against the proxy of BASELINE_SRC (e.g. a checkout of the commit before segments) in the same run;
target <= 0.2 ms p50 added.

`--limits` measures what quotas cost instead: the same proxy with PERSONA_LIMITS unset and with every
rate limit on (high enough never to refuse), at c=1, alternating; target <= 0.1 ms p50 added.

`--tracing` measures what OpenTelemetry tracing costs: the same proxy without OTEL_* (the baseline),
with every call traced and exported over OTLP/HTTP, and with 1% of calls sampled, alternating: p50 at
c=1, the proxy's own x-persona-overhead-ms, req/s and proxy CPU per request at c=16.

Targets: >= 1,000 req/s through the proxy with persona injection at concurrency 16, and
p50 added latency <= 2 ms.

The API table (same run) puts the other routes beside chat completions: /v1/responses with the persona
injected (non-stream and stream) and /v1/embeddings passed through: p50 added at c=1 and req/s at
c=16, median of the runs with their spread. Targets: Responses within 10% of chat's throughput; a
pass-through route adds <= 0.5 ms p50 at c=1. `--apis-only` runs just that table; with
`--against DIR` it measures the checkout at DIR too, alternately in the same run, as the baseline
(with `--everything`, both as a production deployment runs them). Three views of latency are printed: saturated at c=16 (queueing
dominates: by Little's law p50 ~ 16 / throughput), paced at about 1,000 req/s over 16 connections
(the target rate, below saturation), and c=1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import httpx

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


RESPONSES_BODY = {
    "model": "fake-model",
    "instructions": "You are a helpful assistant for the ACME store.",
    "input": "Which running shoes would you recommend for a beginner?",
    "user": "bench-user",
}
# (label, path, body, personalized): each measured direct against the upstream and through the proxy.
APIS = (
    ("chat completions", "/chat/completions", BODY),
    ("chat completions, stream", "/chat/completions", {**BODY, "stream": True}),
    ("responses", "/responses", RESPONSES_BODY),
    ("responses, stream", "/responses", {**RESPONSES_BODY, "stream": True}),
    ("embeddings (pass-through)", "/embeddings", {"model": "fake-model", "input": ["running shoes"]}),
)


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


# Every metered limit on, none ever reached in a benchmark run.
LIMITS_ON = {
    "default": {
        "requests_per_minute": 10_000_000,
        "user_requests_per_minute": 10_000_000,
        "concurrency": 10_000,
        "tokens_per_day": 10**15,
    }
}


def limits_cost(runs: int, seconds: float) -> None:
    with (
        h.redis() as redis,
        h.fake_upstream() as upstream,
        h.proxy(redis.url, upstream) as off,
        h.proxy(redis.url, upstream, limits=json.dumps(LIMITS_ON)) as on,
    ):
        h.put_persona(off, "bench-user", PERSONA, [EXEMPLAR, EXEMPLAR])
        cases = {
            "limits off": (f"{off}/v1/chat/completions", BODY),
            "limits on": (f"{on}/v1/chat/completions", BODY),
        }
        results, overhead = h.c1_rounds(cases, runs, seconds, overhead_calls=300)
    errors = sum(r["non_2xx"] for rs in results.values() for r in rs)
    print(f"{runs} runs x {seconds:.0f} s at c=1, wrk -t1, median of runs; non-2xx responses: {errors:.0f}")
    print(f"{'path':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, rs in results.items():
        print(
            f"{'proxy + persona, ' + name:<28}{median(rs, 'rps'):>10.0f}{median(rs, 'p50_ms'):>10.3f}{median(rs, 'p99_ms'):>10.3f}"
        )
    added = median(results["limits on"], "p50_ms") - median(results["limits off"], "p50_ms")
    print(
        f"added p50 with limits on, c=1 (wrk): {added:.3f} ms ({'met' if added <= 0.1 else 'NOT met'}: <= 0.1 ms)"
    )
    # The proxy's own measure of the time before forwarding (x-persona-overhead-ms), which holds the
    # quota check and persona read round trip and none of the client's or upstream's time.
    own = {name: statistics.median(values) for name, values in overhead.items()}
    added_own = own["limits on"] - own["limits off"]
    print(
        f"x-persona-overhead-ms p50, c=1: limits off {own['limits off']:.3f} ms, on {own['limits on']:.3f} ms, "
        f"added {added_own:.3f} ms ({'met' if added_own <= 0.1 else 'NOT met'}: <= 0.1 ms)"
    )


def feedback_cost(runs: int, seconds: float) -> None:
    """p50 at c=1 with feedback records off (baseline), on, and on keeping the texts: many short
    slices, the configurations in a rotating order, so a busy machine weighs on each alike. Also the
    proxy's CPU time per request (steadier than latency on a shared machine) and, per slice, the
    difference to the baseline slice next to it."""
    configs = {
        "records off": {"feedback_records": "false"},
        "records on": {"feedback_records": "true"},
        "records on, texts kept": {"feedback_records": "true", "feedback_keep_text": "true"},
    }
    bodies = {"chat": BODY, "chat, stream": {**BODY, "stream": True}}
    names = list(configs)
    with h.redis() as redis, h.fake_upstream() as upstream, contextlib.ExitStack() as stack:
        urls = {
            name: stack.enter_context(h.proxy(redis.url, upstream, **env)) for name, env in configs.items()
        }
        h.put_persona(urls["records off"], "bench-user", PERSONA, [EXEMPLAR, EXEMPLAR])
        p50: dict[tuple[str, str], list[float]] = {(c, b): [] for c in configs for b in bodies}
        cpu: dict[tuple[str, str], list[float]] = {(c, b): [] for c in configs for b in bodies}
        for url in urls.values():
            for body in bodies.values():
                h.wrk(f"{url}/v1/chat/completions", body, connections=1, seconds=1)  # warm-up
        for run in range(runs):
            order = names[run % len(names) :] + names[: run % len(names)]
            for body_name, body in bodies.items():
                for name in order:
                    result = h.wrk_cpu(
                        f"{urls[name]}/v1/chat/completions", body, connections=1, seconds=seconds
                    )
                    if result["non_2xx"]:
                        raise SystemExit(f"{name}: {result['non_2xx']:.0f} non-2xx answers")
                    p50[(name, body_name)].append(result["p50_ms"])
                    cpu[(name, body_name)].append(result["cpu_ms"])
        written = sum(1 for _ in redis_client(redis.url).scan_iter(match="pm:feedback-owner:*", count=1000))
    print(
        f"{runs} slices x {seconds:.0f} s at c=1 per configuration, rotating order (wrk -t1); records: {written}"
    )
    print(
        f"{'configuration':<36}{'p50 ms':>9}{'spread':>15}{'added (paired)':>16}{'spread':>17}"
        f"{'ratio':>7}{'CPU ms/req':>12}{'added':>8}"
    )
    worst = worst_cpu = 0.0
    for body_name in bodies:
        base = p50[("records off", body_name)]
        base_cpu = statistics.median(cpu[("records off", body_name)])
        for name in configs:
            values = p50[(name, body_name)]
            paired = [v - b for v, b in zip(values, base, strict=True)]
            added = statistics.median(paired)
            own_cpu = statistics.median(cpu[(name, body_name)])
            if name != "records off":
                worst, worst_cpu = max(worst, added), max(worst_cpu, own_cpu - base_cpu)
            print(
                f"{body_name + ', ' + name:<36}{statistics.median(values):>9.3f}{h.spread(values):>15}"
                f"{added:>16.3f}{h.spread(paired):>17}{statistics.median(values) / statistics.median(base):>7.3f}"
                f"{own_cpu:>12.3f}{own_cpu - base_cpu:>8.3f}"
            )
    verdict = "met" if worst <= 0.1 else "NOT met"
    print(
        f"feedback records, worst added p50 at c=1 (median of paired slices): {worst:.3f} ms ({verdict}: <= 0.1 ms)"
    )
    print(f"feedback records, worst added proxy CPU per request: {worst_cpu:.3f} ms")


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def tracing_cost(runs: int, seconds: float, connections: int) -> None:
    """The same proxy (every limit on, persona injected) without OTEL_*, with every call traced and
    exported over OTLP/HTTP (to the fake upstream's port, which answers 404: the export work is done
    all the same), and with 1% of the calls sampled (traceidratio), alternating in each run."""
    with h.redis() as redis, h.fake_upstream() as upstream:
        root = upstream.removesuffix("/v1")
        exporting = {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{root}/v1/traces",
            "OTEL_SERVICE_NAME": "persona-bench",
        }
        sampled = {**exporting, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
        limits = json.dumps(LIMITS_ON)
        with (
            h.proxy(redis.url, upstream, limits=limits) as off,
            h.proxy(redis.url, upstream, environ=exporting, limits=limits) as on,
            h.proxy(redis.url, upstream, environ=sampled, limits=limits) as one_percent,
        ):
            h.put_persona(off, "bench-user", PERSONA, [EXEMPLAR, EXEMPLAR])
            urls = {
                "tracing off": f"{off}/v1/chat/completions",
                "tracing on": f"{on}/v1/chat/completions",
                "tracing on, 1% sampled": f"{one_percent}/v1/chat/completions",
            }
            for url in urls.values():
                h.wrk(url, BODY, connections=connections, seconds=2)  # warm-up
            c1: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
            loaded: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
            cpu_ms: dict[str, list[float]] = {name: [] for name in urls}
            own: dict[str, list[float]] = {name: [] for name in urls}
            for _ in range(runs):
                for name, url in urls.items():
                    c1[name].append(h.wrk(url, BODY, connections=1, seconds=seconds / 2))
                    own[name].append(statistics.median(h.reported_overhead(url, 200, BODY)))
                    loaded[name].append(h.wrk_cpu(url, BODY, connections=connections, seconds=seconds))
                    cpu_ms[name].append(loaded[name][-1]["cpu_ms"])
    errors = sum(r["non_2xx"] for rs in (*c1.values(), *loaded.values()) for r in rs)
    print(f"{runs} runs, wrk -t1, median of runs (spread min-max); non-2xx responses: {errors:.0f}")
    print(
        f"{'proxy + persona + limits':<26}{'p50 c=1 ms':>12}{'spread':>14}{'own ms c=1':>12}{'spread':>14}"
        f"{f'req/s c={connections}':>12}{'spread':>12}{'CPU ms/req':>12}{'spread':>14}"
    )
    for name in urls:
        p50 = [r["p50_ms"] for r in c1[name]]
        rps = [r["rps"] for r in loaded[name]]
        print(
            f"{name:<26}{statistics.median(p50):>12.3f}{h.spread(p50):>14}{statistics.median(own[name]):>12.3f}"
            f"{h.spread(own[name]):>14}{statistics.median(rps):>12.0f}{f'{min(rps):.0f}-{max(rps):.0f}':>12}"
            f"{statistics.median(cpu_ms[name]):>12.3f}{h.spread(cpu_ms[name]):>14}"
        )
    for name in ("tracing on", "tracing on, 1% sampled"):
        added = statistics.median(r["p50_ms"] for r in c1[name]) - statistics.median(
            r["p50_ms"] for r in c1["tracing off"]
        )
        ratio = statistics.median(r["rps"] for r in loaded[name]) / statistics.median(
            r["rps"] for r in loaded["tracing off"]
        )
        cpu = statistics.median(cpu_ms[name]) - statistics.median(cpu_ms["tracing off"])
        print(
            f"{name} vs off: added p50 at c=1 {added:.3f} ms; throughput ratio at c={connections} "
            f"{ratio:.3f}; added CPU {cpu:.3f} ms per request"
        )


TOPICS = (
    "running shoes trail marathon training pace",
    "laptop keyboard battery screen repair",
    "coffee espresso grinder beans roast",
    "python code function list error",
    "garden tomatoes soil compost watering",
    "travel flights hotel itinerary visa",
    "budget savings taxes mortgage interest",
    "guitar chords practice strings amplifier",
    "cooking recipe oven chicken spices",
    "cycling bike gears tyres saddle",
)


def plant_contexts(redis_url: str, user: str, *, full_router: bool = False) -> None:
    """10 context personas and their router for `user`, stored as a refresh job stores them
    (`ContextStore`). The router is built from a few prompts per context (about 2 KB), or with
    `full_router` from 40 prompts per context of varied words, so that its IDF table and centroids
    reach their caps (about 96 KB; one induced from 400 real prompts measured 65 KB)."""
    import asyncio
    import random

    from redis.asyncio import Redis

    from middleware.models import PreferencePair
    from middleware.personalize.contexts import build_router
    from middleware.store.contexts import ContextStore

    exemplar = PreferencePair.model_validate({**EXEMPLAR, "user_id": user})
    groups = {}
    rng = random.Random(7)
    for i, topic in enumerate(TOPICS):
        words = topic.split()
        prompts = [f"Question about {w} and {words[(j + 1) % len(words)]}" for j, w in enumerate(words)]
        if full_router:
            prompts = [
                f"{topic} " + " ".join(f"{words[k % len(words)]}{rng.randrange(300)}" for k in range(12))
                for _ in range(40)
            ]
        groups[f"ctx{i}"] = ("tag", prompts)

    async def store() -> None:
        async with Redis.from_url(redis_url) as redis:
            contexts = ContextStore(redis)
            for name in groups:
                await contexts.save("bench", user, name, f"{PERSONA} ({name})", [exemplar, exemplar])
            await contexts.set_router("bench", user, build_router(groups).model_dump_json().encode())

    asyncio.run(store())


def contexts_cost(runs: int, seconds: float) -> None:
    bodies = {"general only": BODY, "10 contexts, routed": {**BODY, "user": "bench-ctx"}}
    with h.redis() as redis, h.fake_upstream() as upstream, h.proxy(redis.url, upstream) as proxy:
        for user in ("bench-user", "bench-ctx"):
            h.put_persona(proxy, user, PERSONA, [EXEMPLAR, EXEMPLAR])
        plant_contexts(redis.url, "bench-ctx")
        url = f"{proxy}/v1/chat/completions"
        with httpx.Client(headers={"Authorization": f"Bearer {h.APP_KEY}"}) as client:
            routed = client.post(url, json=bodies["10 contexts, routed"]).headers["x-persona-context"]
        print(f"the routed user's call goes to: {routed}")
        cases = {name: (url, body) for name, body in bodies.items()}
        results, overhead = h.c1_rounds(cases, runs, seconds, overhead_calls=200)
    print(f"{runs} runs x {seconds:.0f} s at c=1, wrk -t1, median of runs (spread min-max)")
    print(f"{'user':<24}{'p50 ms':>10}{'spread':>16}{'p99 ms':>10}")
    for name, rs in results.items():
        p50 = [r["p50_ms"] for r in rs]
        print(f"{name:<24}{statistics.median(p50):>10.3f}{h.spread(p50):>16}{median(rs, 'p99_ms'):>10.3f}")
    per_run = [
        c["p50_ms"] - g["p50_ms"]
        for g, c in zip(results["general only"], results["10 contexts, routed"], strict=True)
    ]
    added = statistics.median(per_run)
    print(
        f"added p50 by routing, c=1 (wrk): {added:.3f} ms, per run {h.spread(per_run)} ({'met' if added <= 0.5 else 'NOT met'}: <= 0.5 ms)"
    )
    own = {name: statistics.median(values) for name, values in overhead.items()}
    print(
        "x-persona-overhead-ms p50, c=1: "
        + ", ".join(f"{name} {value:.3f} ms" for name, value in own.items())
        + f", added {own['10 contexts, routed'] - own['general only']:.3f} ms"
    )


SEGMENT_BODY = {**BODY, "user": "bench-segment-user"}


def put_segment_persona(proxy: str) -> None:
    """A segment `bench-seg` with a persona, and `bench-segment-user` (no persona of its own) in it."""
    admin = {"Authorization": f"Bearer {h.ADMIN_KEY}", "X-Persona-Tenant": "bench"}
    httpx.put(
        f"{proxy}/admin/segments/bench-seg", json={"persona": PERSONA}, headers=admin
    ).raise_for_status()
    httpx.put(
        f"{proxy}/admin/users/bench-segment-user/segment", json={"segment": "bench-seg"}, headers=admin
    ).raise_for_status()


async def _store_round_trips(url: str, blocks: int, per_block: int) -> dict[str, list[float]]:
    """Median ms per block of the chat path's store round trip, today's (ADMIT + the user's GET) and
    with the resolution (ADMIT + GET + RESOLVE), for a user with a persona and one with a segment's;
    the cases alternate block by block."""
    import time

    from redis.asyncio import Redis

    from middleware.models import Persona
    from middleware.store import keys
    from middleware.store.ratelimits import ADMIT, RateLimitStore
    from middleware.store.segments import RESOLVE

    redis = Redis.from_url(url)
    blob = Persona(text=PERSONA, version=1, version_id="v" * 32, created_at="").model_dump_json()
    await redis.set(keys.persona_current("bench", "own"), blob)
    await redis.set(keys.segment_line("bench", "seg").current, blob)
    await redis.hset(keys.segment_members("bench"), "member", "seg")
    admit_sha, _ = await redis.script_load(ADMIT), await redis.script_load(RESOLVE)
    store = RateLimitStore(redis)
    call = store.admit_call(
        "bench",
        "own",
        cost=1,
        rpm=10**7,
        user_rpm=10**7,
        concurrency=0,
        lease="",
        lease_ms=1000,
        tokens_per_day=0,
        day="20260101",
        ms_to_day_end=10**6,
    )

    async def today() -> None:
        pipe = redis.pipeline(transaction=False)
        pipe.evalsha(admit_sha, len(call[0]), *call[0], *call[1])
        pipe.get(keys.persona_current("bench", "own"))
        await pipe.execute()

    cases = {
        "today: ADMIT + GET": today,
        "resolve, own persona": lambda: store.admit_and_read(call, "bench", "own", None),
        "resolve, segment persona": lambda: store.admit_and_read(call, "bench", "member", None),
    }
    out: dict[str, list[float]] = {name: [] for name in cases}
    for run in cases.values():  # warm-up (and the scripts loaded in this process)
        for _ in range(200):
            await run()
    for _ in range(blocks):
        for name, run in cases.items():
            times = []
            for _ in range(per_block):
                started = time.perf_counter()
                await run()
                times.append((time.perf_counter() - started) * 1000)
            out[name].append(statistics.median(times))
    await redis.aclose()
    return out


def store_round_trips(redis_url: str, blocks: int = 30, per_block: int = 300) -> None:
    import asyncio

    found = asyncio.run(_store_round_trips(redis_url, blocks, per_block))
    print(f"store round trip of the chat path, in-process, {blocks} alternating blocks x {per_block} calls:")
    print(f"{'case':<28}{'p50 ms':>9}{'spread of block p50s':>24}")
    for name, values in found.items():
        print(f"{name:<28}{statistics.median(values):>9.3f}{h.spread(values):>24}")
    base = statistics.median(found["today: ADMIT + GET"])
    for name in ("resolve, own persona", "resolve, segment persona"):
        added = statistics.median(found[name]) - base
        paired = [a - b for a, b in zip(found[name], found["today: ADMIT + GET"], strict=True)]
        print(
            f"{name}: added {added:.3f} ms p50 (block-paired differences {h.spread(paired)}); "
            f"{'met' if added <= 0.2 else 'NOT met'}: <= 0.2"
        )


def segments_cost(runs: int, seconds: float, baseline_src: Path) -> None:
    """The persona resolution (own > segment > tenant > none, docs/ARCHITECTURE.md "Segments") at
    c=1 with every limit on, against `baseline_src`'s proxy (a checkout without segments, reading only
    the user's own persona) in the same run, alternating; target <= 0.2 ms p50 added."""
    limits = json.dumps(LIMITS_ON)
    admin = {"Authorization": f"Bearer {h.ADMIN_KEY}", "X-Persona-Tenant": "bench"}
    with h.redis() as redis:
        store_round_trips(redis.url)
    with (
        h.redis() as redis,
        h.fake_upstream() as upstream,
        h.proxy(redis.url, upstream, root=baseline_src.resolve(), limits=limits) as before,
        h.proxy(redis.url, upstream, limits=limits) as after,
    ):
        h.put_persona(after, "bench-user", PERSONA, [EXEMPLAR, EXEMPLAR])
        put_segment_persona(after)
        httpx.put(f"{after}/admin/tenant/persona", json={"text": PERSONA}, headers=admin).raise_for_status()
        cases = {
            "before: own persona": (f"{before}/v1/chat/completions", BODY),
            "after: own persona": (f"{after}/v1/chat/completions", BODY),
            "after: segment persona": (f"{after}/v1/chat/completions", SEGMENT_BODY),
        }
        results, overhead = h.c1_rounds(cases, runs, seconds, overhead_calls=300)
    errors = sum(r["non_2xx"] for rs in results.values() for r in rs)
    print(f"{runs} runs x {seconds:.0f} s at c=1, limits on, wrk -t1; non-2xx responses: {errors:.0f}")
    print(f"baseline: {baseline_src}")
    print(f"{'case':<26}{'req/s':>9}{'p50 ms':>9}{'spread':>14}{'p99 ms':>9}{'own ms':>9}")
    for name, rs in results.items():
        p50s = [r["p50_ms"] for r in rs]
        print(
            f"{name:<26}{median(rs, 'rps'):>9.0f}{statistics.median(p50s):>9.3f}{h.spread(p50s):>14}"
            f"{median(rs, 'p99_ms'):>9.3f}{statistics.median(overhead[name]):>9.3f}"
        )
    base = median(results["before: own persona"], "p50_ms")
    base_own = statistics.median(overhead["before: own persona"])
    for name in ("after: own persona", "after: segment persona"):
        added = median(results[name], "p50_ms") - base
        added_own = statistics.median(overhead[name]) - base_own
        verdict = "met" if added <= 0.2 else "NOT met"
        print(
            f"{name}: added p50 {added:.3f} ms (wrk), {added_own:.3f} ms (x-persona-overhead-ms); {verdict}: <= 0.2"
        )


def api_table(upstream: str, proxies: dict[str, str], runs: int, seconds: float, connections: int) -> None:
    """Added p50 at c=1 and req/s at c=`connections` for each API, direct and through each proxy
    (`proxies`: name -> URL; several names: a baseline checkout beside this one, alternating)."""
    cases = [(name, label) for label, _, _ in APIS for name in proxies]
    added: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
    rps: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
    # CPU time of the proxy process per request under load: steadier than req/s on a shared machine.
    cpu_ms: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
    p99: dict[tuple[str, str], list[float]] = {case: [] for case in cases}  # at c=`connections`
    for proxy in proxies.values():
        for _, path, body in APIS:
            h.wrk(f"{proxy}/v1{path}", body, connections=connections, seconds=1)  # warm-up
    for _ in range(runs):
        for label, path, body in APIS:
            direct = h.wrk(f"{upstream}{path}", body, connections=1, seconds=seconds / 2)
            for name, proxy in proxies.items():
                through = h.wrk(f"{proxy}/v1{path}", body, connections=1, seconds=seconds / 2)
                added[name, label].append(through["p50_ms"] - direct["p50_ms"])
                loaded = h.wrk_cpu(f"{proxy}/v1{path}", body, connections=connections, seconds=seconds)
                if loaded["non_2xx"]:
                    raise SystemExit(f"{name} {label}: {loaded['non_2xx']:.0f} non-2xx answers")
                rps[name, label].append(loaded["rps"])
                p99[name, label].append(loaded["p99_ms"])
                cpu_ms[name, label].append(loaded["cpu_ms"])
    for name in proxies:
        title = f" ({name})" if len(proxies) > 1 else ""
        print(f"\nAPIs{title}, {runs} runs (median, spread min-max)")
        print(
            f"{'route':<28}{'added p50 c=1 ms':>18}{'spread':>16}{f'req/s c={connections}':>14}{'spread':>14}"
            f"{'proxy CPU ms/req':>18}{'spread':>14}{f'p99 c={connections} ms':>16}{'spread':>16}"
        )
        for label, _, _ in APIS:
            a, r, c, t = added[name, label], rps[name, label], cpu_ms[name, label], p99[name, label]
            print(
                f"{label:<28}{statistics.median(a):>18.3f}{h.spread(a):>16}{statistics.median(r):>14.0f}"
                f"{f'{min(r):.0f}-{max(r):.0f}':>14}{statistics.median(c):>18.3f}{h.spread(c):>14}"
                f"{statistics.median(t):>16.2f}{h.spread(t):>16}"
            )
        for label, base in (
            ("responses", "chat completions"),
            ("responses, stream", "chat completions, stream"),
        ):
            chat, chat_cpu = statistics.median(rps[name, base]), statistics.median(cpu_ms[name, base])
            ratio = statistics.median(rps[name, label]) / chat
            by_cpu = chat_cpu / statistics.median(cpu_ms[name, label])
            print(
                f"{label} / {base} throughput: {ratio:.3f} measured, {by_cpu:.3f} from CPU per request "
                f"({'met' if max(ratio, by_cpu) >= 0.9 else 'NOT met'}: >= 0.9)"
            )
        passthrough = statistics.median(added[name, "embeddings (pass-through)"])
        print(
            f"pass-through added p50 at c=1: {passthrough:.3f} ms "
            f"({'met' if passthrough <= 0.5 else 'NOT met'}: <= 0.5)"
        )


def ttfb_against(root: Path, runs: int) -> None:
    """Stream time to first byte added at c=1 (chat completions, Responses), the baseline checkout at
    `root` and this one alternating, behind an upstream whose first chunk comes after a fixed delay."""
    import side_by_side
    import ttfb

    with (
        h.redis() as redis,
        h.fake_upstream(delay_ms=side_by_side.STREAM_DELAY_MS) as slow,
        h.proxy(redis.url, slow, root=root) as before,
        h.proxy(redis.url, slow) as proxy,
    ):
        h.put_persona(proxy, "bench-user", PERSONA, [EXEMPLAR, EXEMPLAR])
        proxies = {"baseline": before, "this checkout": proxy}
        print(f"\nstream time to first byte added at c=1, {runs} runs (median, spread min-max)")
        for label, path, body in (APIS[1], APIS[3]):
            added: dict[str, list[float]] = {name: [] for name in proxies}
            for _ in range(runs):
                for name, url in proxies.items():
                    added[name] += ttfb.added_ttfb(
                        f"{slow}{path}", f"{url}/v1{path}", body, runs=1, count=100
                    )
            print(
                f"{label:<28}"
                + "".join(
                    f"{name}: {statistics.median(a):.3f} ms ({h.spread(a)})   " for name, a in added.items()
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--paced-rate", type=float, default=1000.0, help="req/s offered in the paced run")
    parser.add_argument("--limits", action="store_true", help="measure the cost of quotas (c=1)")
    parser.add_argument("--contexts", action="store_true", help="measure the cost of context routing (c=1)")
    parser.add_argument("--feedback", action="store_true", help="measure the cost of feedback records (c=1)")
    parser.add_argument("--apis-only", action="store_true", help="only the table of APIs beside chat")
    parser.add_argument("--tracing", action="store_true", help="measure the cost of OpenTelemetry tracing")
    parser.add_argument(
        "--segments", type=Path, metavar="BASELINE_SRC", help="cost of the persona resolution vs a checkout"
    )
    parser.add_argument(
        "--against",
        type=Path,
        help="with --apis-only: another checkout of the project (e.g. a `git archive` of main), measured "
        "alternately in the same run as the baseline",
    )
    parser.add_argument("--side-by-side", action="store_true", help="chat and responses beside the upstream")
    parser.add_argument("--with-litellm", action="store_true", help="side by side, with LiteLLM's proxy too")
    parser.add_argument("--workers", type=int, default=1, help="side by side, with `serve --workers N` too")
    parser.add_argument(
        "--floor", action="store_true", help="side by side, with floor_proxy.py (the least a proxy does) too"
    )
    parser.add_argument(
        "--everything",
        action="store_true",
        help="with every production feature on (side by side, --apis-only, the default table): limits, "
        "feedback records, 10 contexts",
    )
    args = parser.parse_args()
    if args.segments:
        segments_cost(args.runs, args.seconds, args.segments)
        return
    if args.side_by_side or args.with_litellm:
        import side_by_side

        paths: tuple[tuple[str, str, dict[str, Any]], ...] = (
            ("chat completions", "/chat/completions", BODY),
            ("responses", "/responses", RESPONSES_BODY),
        )
        settings: dict[str, str] = {}
        prepare = None
        if args.everything:
            # as a production deployment runs: every limit, feedback records, a user with contexts
            settings = {"limits": json.dumps(LIMITS_ON), "feedback_records": "true"}
            paths = tuple((label, path, {**body, "user": "bench-ctx"}) for label, path, body in paths)

            def prepare(_proxy: str, redis_url: str) -> None:
                plant_contexts(redis_url, "bench-ctx")

        result = side_by_side.run(
            paths,
            (PERSONA, [EXEMPLAR, EXEMPLAR]),
            runs=args.runs,
            seconds=args.seconds,
            connections=args.connections,
            with_litellm=args.with_litellm,
            workers=args.workers,
            settings=settings,
            prepare=prepare,
            floor=args.floor,
        )
        side_by_side.report(result)
        side_by_side.save(result)
        return
    if args.limits:
        limits_cost(args.runs, args.seconds)
        return
    if args.contexts:
        contexts_cost(args.runs, args.seconds)
        return
    if args.feedback:
        feedback_cost(args.runs, args.seconds)
        return
    if args.tracing:
        tracing_cost(args.runs, args.seconds, args.connections)
        return

    everything = {"limits": json.dumps(LIMITS_ON), "feedback_records": "true"} if args.everything else {}
    if args.apis_only and args.against is not None:
        with (
            h.redis() as redis,
            h.fake_upstream() as upstream,
            h.proxy(redis.url, upstream, root=args.against.resolve(), **everything) as before,
            h.proxy(redis.url, upstream, **everything) as proxy,
        ):
            h.put_persona(proxy, "bench-user", PERSONA, [EXEMPLAR, EXEMPLAR])  # one Redis: both see it
            if args.everything:  # the user's calls routed among 10 context personas
                plant_contexts(redis.url, "bench-user")
            api_table(
                upstream,
                {"baseline": before, "this checkout": proxy},
                args.runs,
                args.seconds,
                args.connections,
            )
        ttfb_against(args.against.resolve(), args.runs)
        return
    with h.redis() as redis, h.fake_upstream() as upstream, h.proxy(redis.url, upstream, **everything) as proxy:
        h.put_persona(proxy, "bench-user", PERSONA, [EXEMPLAR, EXEMPLAR])
        if args.everything:
            plant_contexts(redis.url, "bench-user")
        if args.apis_only:
            api_table(upstream, {"proxy": proxy}, args.runs, args.seconds, args.connections)
            return
        direct_url, proxy_url = f"{upstream}/chat/completions", f"{proxy}/v1/chat/completions"
        h.wrk(proxy_url, BODY, connections=args.connections, seconds=2)  # warm-up
        names = ("direct", "proxy", "direct_paced", "proxy_paced", "direct_c1", "proxy_c1")
        results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        # each connection sends one request per `period` ms: 16 connections -> ~1,000 req/s offered
        period = args.connections * 1000.0 / args.paced_rate
        for _ in range(args.runs):
            for name, url in (("direct", direct_url), ("proxy", proxy_url)):
                results[name].append(h.wrk(url, BODY, connections=args.connections, seconds=args.seconds))
            for name, url in (("direct_paced", direct_url), ("proxy_paced", proxy_url)):
                # calibrate the pause on the latency under this load, so the achieved rate is on target
                pause = period - h.wrk(url, BODY, connections=1, seconds=1)["p50_ms"]
                trial = h.wrk(url, BODY, connections=args.connections, seconds=2, pause_ms=pause)
                pause -= period * (args.paced_rate / max(trial["rps"], 1.0) - 1.0)
                results[name].append(
                    h.wrk(url, BODY, connections=args.connections, seconds=args.seconds, pause_ms=pause)
                )
            for name, url in (("direct_c1", direct_url), ("proxy_c1", proxy_url)):
                results[name].append(h.wrk(url, BODY, connections=1, seconds=args.seconds / 2))
        api_table(upstream, {"proxy": proxy}, args.runs, args.seconds, args.connections)

    errors = sum(r["non_2xx"] for runs in results.values() for r in runs)
    print(
        f"{args.runs} runs x {args.seconds:.0f} s, wrk -t1, median of runs; non-2xx responses: {errors:.0f}"
    )
    print(f"{'path':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, label in (
        ("direct", f"direct upstream, c={args.connections}"),
        ("proxy", f"proxy + persona, c={args.connections}"),
        ("direct_paced", f"direct, paced ~{args.paced_rate:.0f}/s"),
        ("proxy_paced", f"proxy, paced ~{args.paced_rate:.0f}/s"),
        ("direct_c1", "direct upstream, c=1"),
        ("proxy_c1", "proxy + persona, c=1"),
    ):
        runs = results[name]
        print(
            f"{label:<28}{median(runs, 'rps'):>10.0f}{median(runs, 'p50_ms'):>10.3f}{median(runs, 'p99_ms'):>10.3f}"
        )
    added_p50 = median(results["proxy"], "p50_ms") - median(results["direct"], "p50_ms")
    added_c1 = median(results["proxy_c1"], "p50_ms") - median(results["direct_c1"], "p50_ms")
    added_paced = median(results["proxy_paced"], "p50_ms") - median(results["direct_paced"], "p50_ms")
    ratio = median(results["proxy"], "rps") / median(results["direct"], "rps")
    print(f"proxy/direct throughput ratio: {ratio:.3f}")
    print(
        f"added p50 latency: saturated c={args.connections} {added_p50:.3f} ms; "
        f"paced at {median(results['proxy_paced'], 'rps'):.0f} req/s {added_paced:.3f} ms; c=1 {added_c1:.3f} ms"
    )
    throughput_ok = median(results["proxy"], "rps") >= 1000
    print(f"throughput >= 1000 req/s with persona: {'met' if throughput_ok else 'NOT met'}")
    print(
        f"added p50 <= 2 ms at ~1000 req/s (paced): {'met' if added_paced <= 2.0 else 'NOT met'}; "
        f"at c=1: {'met' if added_c1 <= 2.0 else 'NOT met'}; saturated c={args.connections}: "
        f"{'met' if added_p50 <= 2.0 else 'NOT met (queueing)'}"
    )


if __name__ == "__main__":
    main()
