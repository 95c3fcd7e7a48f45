"""Cost of the `lora` reranker on this machine (CPU unless a GPU is present).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rerank_cost.py [--data FILE] [--runs 5] [--out FILE]
        [--quantize] [--context-tokens 128]

Measures, as the median over `--runs` rounds:
* score_p50_ms: p50 latency of scoring four candidates with a warm (cached) user adapter; every call
  uses texts the encoder has not seen (candidates and the Reddit post as context are fresh), so
  encoding is included;
* score_prepared_p50_ms: the same, with the context encoded beforehand (`prepare_context`), as rerank
  mode does while the candidates are being generated: only the candidates are encoded in the call;
* score_short_context_p50_ms: the same with a chat-sized prompt (the post's title line) instead of
  the whole post as context;
* score_cached_p50_ms: the same with texts already embedded (the head and adapter alone);
* train_user_s: training one user's adapter on 50 pairs (fresh texts, encoding + strength selection);
* adapter_bytes: bytes of one cached adapter's tensors, and the size of its serialised form.

`--quantize` (int8 attention layers) and `--context-tokens N` (context token cap) change the
encoder; `encoder_cosine_min/mean` then compare its vectors to the fp32 encoder's on 200 texts.
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

from middleware.evaluation.data import load_pairs_by_user
from middleware.models import Message, PreferencePair
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
    parser.add_argument("--quantize", action="store_true", help="int8 dynamic quantization (attention)")
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
    started = time.perf_counter()
    model = LoraRewardModel(
        num_threads=args.threads,
        cache_dir=None,
        quantize=args.quantize,
        context_max_length=args.context_tokens,
    )
    load_s = time.perf_counter() - started
    by_user = load_pairs_by_user(args.data)
    cosine: dict[str, float] = {}
    if args.quantize or args.context_tokens:
        reference = TextEncoder(memory_cache_size=1000)
        sample = [p for ps in by_user.values() for p in ps][:100]
        texts = [context_text(p.context) for p in sample] + [str(p.chosen.content) for p in sample]
        contexts = texts[:100]
        ref = np.concatenate([reference.encode(contexts), reference.encode(texts[100:])])
        got = np.concatenate([model.encoder.encode_contexts(contexts), model.encoder.encode(texts[100:])])
        cos = (ref * got).sum(1)
        cosine = {
            "encoder_cosine_min": round(float(cos.min()), 4),
            "encoder_cosine_mean": round(float(cos.mean()), 4),
        }
        del reference
    pairs = [p for ps in by_user.values() for p in ps]
    user = max(by_user, key=lambda u: len(by_user[u]))
    pool = by_user[user]
    started = time.perf_counter()
    model.train_global(pairs[:600])
    global_s = time.perf_counter() - started

    train_s, score_ms, cached_ms, short_ms, prepared_ms = [], [], [], [], []
    for r in range(args.runs):
        fifty = [_fresh(pool[i % len(pool)], f"r{r}t{i}") for i in range(50)]
        t0 = time.perf_counter()
        model.train_user(user, fifty)
        train_s.append(time.perf_counter() - t0)
        lat, lat_cached, lat_short, lat_prepared = [], [], [], []
        for c in range(args.calls):
            base = pool[c % len(pool)]
            ctx = [Message(role="user", content=f"{base.context[-1].content} [r{r}c{c}]")]
            cands = [f"{base.chosen.content} ({r}.{c}.{k})" for k in range(2)] + [
                f"{base.rejected.content} ({r}.{c}.{k})" for k in range(2)
            ]
            t0 = time.perf_counter()
            model.score(ctx, cands, user=user)
            lat.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            model.score(ctx, cands, user=user)
            lat_cached.append((time.perf_counter() - t0) * 1000)
            # a chat-sized prompt (the post's title line) with fresh candidates
            title = next(
                (ln for ln in str(base.context[-1].content).splitlines() if ln.startswith("TITLE")), ""
            )
            short = [Message(role="user", content=f"{title} [s{r}c{c}]")]
            fresh = [f"{t} <{r}.{c}>" for t in cands]
            t0 = time.perf_counter()
            model.score(short, fresh, user=user)
            lat_short.append((time.perf_counter() - t0) * 1000)
            # the context encoded ahead (rerank mode's prepare), fresh candidates
            ahead = [Message(role="user", content=f"{base.context[-1].content} [p{r}c{c}]")]
            model.prepare_context(ahead)
            fresh = [f"{t} <p{r}.{c}>" for t in cands]
            t0 = time.perf_counter()
            model.score(ahead, fresh, user=user)
            lat_prepared.append((time.perf_counter() - t0) * 1000)
        score_ms.append(statistics.median(lat))
        cached_ms.append(statistics.median(lat_cached))
        short_ms.append(statistics.median(lat_short))
        prepared_ms.append(statistics.median(lat_prepared))

    blob = model.train_user(user, pool[:50])
    result = {
        "device": model.device,
        "threads": args.threads,
        "quantized": model.encoder.quantized,
        "context_tokens": model.encoder.context_max_length,
        **cosine,
        "runs": args.runs,
        "encoder_load_s": round(load_s, 2),
        "global_train_s_600_pairs": round(global_s, 2),
        "score_p50_ms": round(statistics.median(score_ms), 1),
        "score_p50_ms_per_run": [round(v, 1) for v in score_ms],
        "score_prepared_p50_ms": round(statistics.median(prepared_ms), 1),
        "score_prepared_p50_ms_per_run": [round(v, 1) for v in prepared_ms],
        "score_short_context_p50_ms": round(statistics.median(short_ms), 1),
        "score_cached_p50_ms": round(statistics.median(cached_ms), 2),
        "train_user_s": round(statistics.median(train_s), 2),
        "train_user_s_per_run": [round(v, 2) for v in train_s],
        "adapter_bytes": model.adapter_nbytes(user),
        "adapter_serialized_bytes": len(blob),
        "adapter_strength": (model.adapter_metadata(user) or {}).get("strength"),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
