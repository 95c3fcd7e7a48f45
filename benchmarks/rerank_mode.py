"""Rerank mode end to end with the `lora` reranker: what scoring adds once the last candidate is in.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rerank_mode.py [--runs 5] [--calls 10] [--out FILE]

A proxy (in this process) in front of the fake upstream, whose four candidates are different
chat-sized answers (~150 words cut from Reddit posts, fresh on every call) arriving 0.1 s apart. The
user has a persona and a trained adapter. Each call reports `x-persona-rerank-ms`, the scoring time
after all candidates arrived. Two rerankers over the same model are compared in the same run, calls
alternating: `lora` (the context and each candidate that arrives before the last are encoded while
the rest are generated) and a baseline that only prepares the context. Medians over rounds, and the
ratio baseline / lora.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import redis as redis_sync

from middleware.preferences.formats import load_pairs_by_user
from middleware.rerank.hookspec import EndUser
from middleware.store import keys
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import ADMIN_KEY, APP_KEY_A, proxy_settings, start_proxy
from tests.support.redis_server import RedisServer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tldr_feedback.jsonl.gz"
TENANT, USER = "tenant-a", "bench-user"
ARRIVALS = {("system", 1.0): 0.05, ("system", 0.1): 0.15, ("assistant", 1.0): 0.25, ("assistant", 0.1): 0.35}


class ContextOnly:
    """The `lora` reranker without the early-candidate hand-over (the baseline)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def prepare(self, context: Sequence[dict[str, Any]], *, user: EndUser | None) -> None:
        await self.inner.prepare(context, user=user)

    async def score(
        self, context: Sequence[dict[str, Any]], candidates: Sequence[str], *, user: EndUser | None
    ) -> list[float]:
        result: list[float] = await self.inner.score(context, candidates, user=user)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="calls per reranker per round")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    try:
        import torch

        from middleware.rerank.lora import LoraRewardModel
    except ImportError:
        print(
            "rerank_mode: skipped, the lora extra is not installed (pip install 'persona-middleware[lora]')"
        )
        return
    if not args.data.exists():
        print(f"rerank_mode: skipped, no pairs file at {args.data} (pass --data)")
        return
    torch.set_num_threads(2)

    by_user = load_pairs_by_user(args.data)
    pairs = [p for ps in by_user.values() for p in ps]
    posts = [str(p.context[-1].content).split() for p in pairs]
    words = [w for post in posts[:200] for w in post]

    def answer(call: int, k: int) -> str:
        start = (997 * call + 211 * k) % (len(words) - 150)
        return " ".join(words[start : start + 150]) + f" [{call}.{k}]"

    calls = {"n": 0}

    def responder(body: dict[str, Any]) -> Reply:
        variant = (body["messages"][0]["role"], body["temperature"])
        k = list(ARRIVALS).index(variant)
        return Reply(
            content=answer(int(body["messages"][-1]["content"].rsplit("#", 1)[1]), k), delay=ARRIVALS[variant]
        )

    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis_server, FakeUpstream() as upstream:
        head = LoraRewardModel(quantize="all", num_threads=2)
        head.train_global(pairs[:600])
        head_path = head.save(Path(tmp) / "head.safetensors")
        upstream.responder = responder
        settings = proxy_settings(
            redis_server.url,
            upstream,
            lora_head_path=str(head_path),
            lora_threads=2,
            rerankers_enabled=["lora", "lora-context-only"],
        )
        with start_proxy(settings) as proxy:
            admin = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Persona-Tenant": TENANT}
            version = httpx.put(
                f"{proxy.url}/admin/users/{USER}/persona",
                json={"text": "Likes answers to the point."},
                headers=admin,
            ).json()["version"]
            user_pairs = by_user[max(by_user, key=lambda u: len(by_user[u]))][:50]
            blob = head.train_user(USER, user_pairs, cache=False)
            redis_sync.Redis.from_url(redis_server.url).set(keys.adapter(TENANT, USER, version), blob)
            registry = proxy.services.rerankers
            lora = registry.get("lora")
            registry.add("lora-context-only", lambda _settings, _resources: ContextOnly(lora))

            def call(reranker: str) -> tuple[float, float]:
                calls["n"] += 1
                question = " ".join(posts[calls["n"] % len(posts)][:40])
                started = time.perf_counter()
                response = httpx.post(
                    f"{proxy.v1}/chat/completions",
                    json={
                        "model": "fake-model",
                        "user": USER,
                        "messages": [{"role": "user", "content": f"{question} #{calls['n']}"}],
                    },
                    headers={
                        "Authorization": f"Bearer {APP_KEY_A}",
                        "X-Persona-Mode": "rerank",
                        "X-Persona-Reranker": reranker,
                    },
                    timeout=30,
                )
                wall = (time.perf_counter() - started) * 1000
                assert (
                    response.status_code == 200 and response.headers["x-persona-rerank-fallback"] == "false"
                )
                return float(response.headers["x-persona-rerank-ms"]), wall

            call("lora")  # warm-up: the adapter is fetched and cached, the encoder's first call paid
            rounds: dict[str, dict[str, list[float]]] = {
                name: {"rerank_ms": [], "wall_ms": []} for name in ("lora", "lora-context-only")
            }
            for _ in range(args.runs):
                got: dict[str, list[tuple[float, float]]] = {name: [] for name in rounds}
                for _ in range(args.calls):
                    for name in rounds:
                        got[name].append(call(name))
                for name, values in got.items():
                    rounds[name]["rerank_ms"].append(statistics.median(v[0] for v in values))
                    rounds[name]["wall_ms"].append(statistics.median(v[1] for v in values))

    result: dict[str, Any] = {
        "runs": args.runs,
        "calls_per_run": args.calls,
        "arrivals_s": list(ARRIVALS.values()),
    }
    for name, series in rounds.items():
        result[name] = {
            "rerank_p50_ms": round(statistics.median(series["rerank_ms"]), 1),
            "rerank_p50_ms_per_run": [round(v, 1) for v in series["rerank_ms"]],
            "wall_p50_ms": round(statistics.median(series["wall_ms"]), 1),
        }
    result["context_only_over_lora"] = round(
        result["lora-context-only"]["rerank_p50_ms"] / result["lora"]["rerank_p50_ms"], 2
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
