"""Cost of the `lora` reranker on this machine (CPU unless a GPU is present).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rerank_cost.py [--data FILE] [--runs 5] [--out FILE]
        [--quantize attention|all] [--context-tokens 128]

Measures, as the median over `--runs` rounds:
* score_p50_ms: p50 latency of scoring four candidates with a warm (cached) user adapter; every call
  uses texts the encoder has not seen (candidates and the Reddit post as context are fresh), so
  encoding is included;
* score_prepared_p50_ms: the same, with the context encoded beforehand (`prepare_context`), as rerank
  mode does while the candidates are being generated: only the candidates are encoded in the call;
* score_short_context_p50_ms: the same with a chat-sized prompt (the post's title line) instead of
  the whole post as context;
* score_chat_p50_ms: rerank mode with chat-sized answers (about 200 tokens each, cut from posts), the
  prompt encoded beforehand;
* score_cached_p50_ms: the same with texts already embedded (the head and adapter alone);
* train_user_s: training one user's adapter on 50 pairs (fresh texts, encoding + strength selection);
* adapter_bytes: bytes of one cached adapter's tensors, and the size of its serialised form.

`--quantize attention|all` measures the int8 encoder after the fp32 one in the same run and prints
the speed-up ratios (`speedup_vs_fp32`) and the cosine similarity of its vectors to fp32's on 200
texts. `--context-tokens N` caps the context tokens of both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from middleware.models import Message, PreferencePair
from middleware.preferences.formats import load_pairs_by_user
from middleware.rerank.lora import LoraRewardModel, TextEncoder, context_text

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tldr_feedback.jsonl.gz"


def _fresh(pair: PreferencePair, tag: str) -> PreferencePair:
    """The same pair with texts the encoder has never seen (a tag appended)."""
    return PreferencePair(
        user_id=pair.user_id,
        context=[Message(role="user", content=f"{pair.context[-1].content} [{tag}]")],
        chosen=Message(role="assistant", content=f"{pair.chosen.content} ({tag}a)"),
        rejected=Message(role="assistant", content=f"{pair.rejected.content} ({tag}b)"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=30, help="scoring calls per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--quantize",
        choices=("off", "attention", "all"),
        default="off",
        help="also measure an int8 encoder (the fp32 one is measured first, as the baseline)",
    )
    parser.add_argument("--context-tokens", type=int, default=None, help="token cap on the context")
    args = parser.parse_args()

    try:
        import torch
    except ImportError:
        print(
            "rerank_cost: skipped, the lora extra is not installed (pip install 'persona-middleware[lora]')"
        )
        return
    if not args.data.exists():
        print(f"rerank_cost: skipped, no pairs file at {args.data} (pass --data)")
        return

    torch.set_num_threads(args.threads)
    by_user = load_pairs_by_user(args.data)
    pairs = [p for ps in by_user.values() for p in ps]
    user = max(by_user, key=lambda u: len(by_user[u]))
    models = {"fp32": None} if args.quantize == "off" else {"fp32": None, args.quantize: None}
    results: dict[str, dict[str, object]] = {}
    for mode in models:
        started = time.perf_counter()
        model = LoraRewardModel(
            num_threads=args.threads,
            cache_dir=None,
            quantize="off" if mode == "fp32" else mode,
            context_max_length=args.context_tokens,
        )
        load_s = time.perf_counter() - started
        results[mode] = {
            "encoder_load_s": round(load_s, 2),
            **measure(model, pairs, by_user[user], user, args),
        }
        if mode != "fp32":
            results[mode].update(cosine_to_fp32(model, pairs))
        del model

    result: dict[str, object] = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": args.threads,
        "context_tokens": args.context_tokens or 256,
        "runs": args.runs,
        "calls_per_run": args.calls,
        **results,
    }
    if args.quantize != "off":
        base, fast = results["fp32"], results[args.quantize]
        result["speedup_vs_fp32"] = {
            k: round(float(base[k]) / float(fast[k]), 2)  # type: ignore[arg-type]
            for k in (
                "score_p50_ms",
                "score_prepared_p50_ms",
                "score_chat_p50_ms",
                "score_short_context_p50_ms",
            )
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def chat_answer(pool: list[PreferencePair], c: int, k: int, tag: str) -> str:
    """A chat-sized answer (about 200 tokens): a stretch of a Reddit post, made fresh by a tag."""
    words = " ".join(str(p.context[-1].content) for p in pool[c % len(pool) : c % len(pool) + 3]).split()
    start = (37 * k) % max(1, len(words) - 150)
    return " ".join(words[start : start + 150]) + f" <{tag}>"


def cosine_to_fp32(model: LoraRewardModel, pairs: list[PreferencePair]) -> dict[str, float]:
    reference = TextEncoder(memory_cache_size=1000)
    sample = pairs[:100]
    contexts = [context_text(p.context) for p in sample]
    answers = [str(p.chosen.content) for p in sample]
    ref = np.concatenate([reference.encode_contexts(contexts), reference.encode(answers)])
    got = np.concatenate([model.encoder.encode_contexts(contexts), model.encoder.encode(answers)])
    cos = (ref * got).sum(1)
    return {
        "encoder_cosine_min": round(float(cos.min()), 4),
        "encoder_cosine_mean": round(float(cos.mean()), 4),
    }


def measure(
    model: LoraRewardModel,
    pairs: list[PreferencePair],
    pool: list[PreferencePair],
    user: str,
    args: argparse.Namespace,
) -> dict[str, object]:
    started = time.perf_counter()
    model.train_global(pairs[:600])
    global_s = time.perf_counter() - started

    series: dict[str, list[float]] = {
        k: [] for k in ("train", "score", "cached", "short", "prepared", "chat")
    }
    for r in range(args.runs):
        fifty = [_fresh(pool[i % len(pool)], f"r{r}t{i}") for i in range(50)]
        t0 = time.perf_counter()
        model.train_user(user, fifty)
        series["train"].append(time.perf_counter() - t0)
        lat: dict[str, list[float]] = {k: [] for k in ("score", "cached", "short", "prepared", "chat")}

        def timed(
            name: str, context: list[Message], candidates: list[str], into: dict[str, list[float]] = lat
        ) -> None:
            t0 = time.perf_counter()
            model.score(context, candidates, user=user)
            into[name].append((time.perf_counter() - t0) * 1000)

        for c in range(args.calls):
            base = pool[c % len(pool)]
            ctx = [Message(role="user", content=f"{base.context[-1].content} [r{r}c{c}]")]
            cands = [f"{base.chosen.content} ({r}.{c}.{k})" for k in range(2)] + [
                f"{base.rejected.content} ({r}.{c}.{k})" for k in range(2)
            ]
            timed("score", ctx, cands)  # the whole post as context, nothing encoded before
            timed("cached", ctx, cands)  # the same texts again: head and adapter alone
            # a chat-sized prompt (the post's title line) with fresh candidates
            title = next(
                (ln for ln in str(base.context[-1].content).splitlines() if ln.startswith("TITLE")), ""
            )
            timed(
                "short",
                [Message(role="user", content=f"{title} [s{r}c{c}]")],
                [f"{t} <{r}.{c}>" for t in cands],
            )
            # the context encoded ahead (rerank mode's prepare), fresh candidates
            ahead = [Message(role="user", content=f"{base.context[-1].content} [p{r}c{c}]")]
            model.prepare_context(ahead)
            timed("prepared", ahead, [f"{t} <p{r}.{c}>" for t in cands])
            # rerank mode with chat-sized answers (~200 tokens each), the context encoded ahead
            question = [Message(role="user", content=f"{title} [q{r}c{c}]")]
            model.prepare_context(question)
            timed("chat", question, [chat_answer(pool, c, k, f"{r}.{c}.{k}") for k in range(4)])
        for name, values in lat.items():
            series[name].append(statistics.median(values))

    blob = model.train_user(user, pool[:50])
    out: dict[str, object] = {
        "quantized": model.encoder.quantize,
        "global_train_s_600_pairs": round(global_s, 2),
        "train_user_s": round(statistics.median(series["train"]), 2),
        "train_user_s_per_run": [round(v, 2) for v in series["train"]],
        "adapter_bytes": model.adapter_nbytes(user),
        "adapter_serialized_bytes": len(blob),
        "adapter_strength": (model.adapter_metadata(user) or {}).get("strength"),
        "score_cached_p50_ms": round(statistics.median(series["cached"]), 2),
    }
    for name, key in (
        ("score", "score_p50_ms"),
        ("prepared", "score_prepared_p50_ms"),
        ("chat", "score_chat_p50_ms"),
        ("short", "score_short_context_p50_ms"),
    ):
        out[key] = round(statistics.median(series[name]), 1)
        out[key + "_per_run"] = [round(v, 1) for v in series[name]]
    return out


if __name__ == "__main__":
    main()
