"""`persona train-reward-head`: fit the `lora` reranker's global head on every user's pairs in a file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def run_train_head(
    settings: Any, *, data: Path, format: str = "native", out: Path | None = None, users: int | None = None
) -> dict[str, Any]:
    """Train the head on all pairs of (at most `users` of) the users in `data`; save it to `out`
    (default `PERSONA_LORA_HEAD_PATH`). Returns a summary. Adapters of the previous head are refused
    from then on (the worker retrains them at each user's next refresh)."""
    from middleware.preferences.formats import load_pairs_by_user
    from middleware.rerank.lora.reranker import model_from_settings

    target = out or (Path(settings.lora_head_path) if settings.lora_head_path else None)
    if target is None:
        raise SystemExit("no output path: pass --out or set PERSONA_LORA_HEAD_PATH")
    by_user = load_pairs_by_user(data, format=format)
    chosen = sorted(by_user)[:users] if users else sorted(by_user)
    pairs = [p for u in chosen for p in by_user[u]]
    started = time.perf_counter()
    model = model_from_settings(settings, cache_size=1)
    stats = model.train_global(pairs, progress=True)
    model.save(target, extra={"data": Path(data).name, "users": str(len(chosen))})
    return {
        "out": str(target),
        "head_id": model.head_id,
        "users": len(chosen),
        "pairs": len(pairs),
        "train_accuracy": round(stats["train_accuracy"], 4),
        "loss": round(stats["loss"], 4),
        "seconds": round(time.perf_counter() - started, 1),
        **model.encoder.describe(),
    }
