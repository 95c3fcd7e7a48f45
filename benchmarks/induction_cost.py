"""Cost of one persona refresh (SynthesizeMe) as the number of preference pairs grows.

A private redis-server and the fake OpenAI-compatible upstream (a fixed latency per call, answers
scripted per pair: bootstrap right on ~80% of pairs, judge right when it sees exemplars). For 10, 30
and 100 pairs, one refresh each, reporting LLM calls (by step), tokens and wall time, first with an
unlimited budget (the pipeline's natural cost), then with the default budget (what a deployment
pays: extra exemplar candidate sets are dropped to stay within `induction_max_calls`).

    .venv/bin/python benchmarks/induction_cost.py [--latency-ms 50] [--sizes 10 30 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from middleware.config import Settings  # noqa: E402
from tests.induction_fakes import InductionResponder, make_pairs  # noqa: E402
from tests.jobs_support import store_services  # noqa: E402
from tests.support.fake_upstream import FakeUpstream  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402


async def one_refresh(
    settings: Settings, upstream: FakeUpstream, pairs: int, latency: float
) -> dict[str, Any]:
    user = f"bench-{pairs}"
    responder = InductionResponder(
        wrong_bootstrap={f"Q{i}" for i in range(0, pairs, 5)},
        judge_right=lambda request, persona, n: n > 0 or int(request[1:]) % 2 == 0,
    )
    upstream.reset()
    upstream.responder = responder.slowed(latency)
    async with store_services(settings) as services:
        await services.preferences.add_pairs("bench", user, make_pairs(user, pairs))
        started = time.perf_counter()
        result = await services.induction.induce("bench", user)
        wall = time.perf_counter() - started
        await services.redis.delete(
            *[k async for k in services.redis.scan_iter(match=f"pm:{{bench:{user}}}:*")]
        )
    cost = result["cost"]
    return {
        "pairs": pairs,
        "train": result["train_pairs"],
        "validation": result["validation_pairs"],
        "kept_traces": result["kept_traces"],
        "calls": cost["calls"],
        "calls_by_step": dict(responder.calls),
        "prompt_tokens": cost["prompt_tokens"],
        "completion_tokens": cost["completion_tokens"],
        "total_tokens": cost["total_tokens"],
        "wall_s": round(wall, 3),
        "validation_accuracy": result["validation_accuracy"],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    latency = args.latency_ms / 1000.0
    report: dict[str, Any] = {"latency_ms": args.latency_ms, "concurrency": args.concurrency, "runs": {}}
    with RedisServer() as redis_server, FakeUpstream() as upstream:
        base = {
            "redis_url": redis_server.url,
            "upstream_api_base": upstream.base_url,
            "induction_model": "fake-judge",
            "induction_concurrency": args.concurrency,
            "embedded_redis": False,
        }
        budgets = {
            "unlimited": {"induction_max_calls": 1_000_000, "induction_max_tokens": 10**9},
            "default": {},
        }
        for label, budget in budgets.items():
            settings = Settings(**base, **budget)
            rows = [await one_refresh(settings, upstream, n, latency) for n in args.sizes]
            report["runs"][label] = {
                "max_calls": settings.induction_max_calls,
                "max_tokens": settings.induction_max_tokens,
                "rows": rows,
            }
    return report


def print_table(report: dict[str, Any]) -> None:
    print(f"fake upstream latency {report['latency_ms']} ms/call, concurrency {report['concurrency']}")
    for label, run in report["runs"].items():
        print(f"\nbudget: {label} (max_calls={run['max_calls']}, max_tokens={run['max_tokens']})")
        print(
            f"{'pairs':>6} {'train/val':>9} {'calls':>6} {'bootstrap':>9} {'synth':>5} {'judge':>6} "
            f"{'tokens':>8} {'wall_s':>7}"
        )
        for row in run["rows"]:
            steps = row["calls_by_step"]
            print(
                f"{row['pairs']:>6} {row['train']:>4}/{row['validation']:<4} {row['calls']:>6} "
                f"{steps.get('BootstrapAnswer', 0):>9} {steps.get('PersonaDraft', 0):>5} "
                f"{steps.get('JudgeVerdict', 0):>6} {row['total_tokens']:>8} {row['wall_s']:>7.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    print_table(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
