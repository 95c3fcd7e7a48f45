"""`persona eval`: run the offline protocol on a pairs file and write a JSON report and a PNG plot."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from middleware.evaluation.data import load_pairs_by_user
from middleware.evaluation.offline import DEFAULT_MIN_PAIRS, evaluate, plot_per_user
from middleware.evaluation.scorers import LoraScorer, make_scorer


def _threads() -> int:
    return int(os.environ.get("PERSONA_TORCH_THREADS", "2"))


def run_eval(
    data: Path,
    scorer: str,
    users: int | None,
    out: Path | None,
    plot: Path | None,
    format: str = "native",
    seed: int = 0,
    *,
    min_pairs: int = DEFAULT_MIN_PAIRS,
    train_fraction: float = 0.7,
    progress: bool = True,
    baseline: bool = True,
    scorer_opts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate `scorer` on `data` (per-user time-ordered hold-out); returns the report as a dict."""
    pairs_by_user = load_pairs_by_user(data, format)
    opts: dict[str, Any] = {"seed": seed, **(scorer_opts or {})}
    if scorer in ("global", "lora"):
        opts.setdefault("num_threads", _threads())
    main = make_scorer(scorer, **opts)
    reference = None  # the global scorer, for the per-user gain
    if isinstance(main, LoraScorer):
        reference = main.as_global()
    elif scorer != "global" and baseline and importlib.util.find_spec("torch") is not None:
        reference = make_scorer("global", seed=seed, num_threads=_threads())
    report = evaluate(
        pairs_by_user,
        main,
        train_fraction=train_fraction,
        min_pairs=min_pairs,
        users=users,
        seed=seed,
        progress=progress,
        baseline=reference,
        scorer_name=scorer,
        data=str(data),
    )
    if scorer == "global":  # the global scorer is its own baseline: gain 0 by definition
        report.global_mean_accuracy = report.mean_accuracy
        report.global_ci = report.ci
        for row in report.per_user:
            row.global_accuracy = row.accuracy
            row.gain = 0.0
        report.gain, report.gain_ci = 0.0, (0.0, 0.0)
        report.gain_ci_low, report.gain_ci_high = 0.0, 0.0
    if isinstance(main, LoraScorer):
        chosen = list(main.strengths_chosen.values())
        report.notes["adapter_strengths"] = {s: chosen.count(s) for s in sorted(set(chosen))}
        if main.adapter_bytes:
            report.notes["adapter_bytes"] = max(main.adapter_bytes.values())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report.to_json())
    if plot is not None:
        plot_per_user(report, plot)
    line = (
        f"{scorer}: mean per-user accuracy {report.mean_accuracy:.3f} "
        f"[95% CI {report.ci_low:.3f}, {report.ci_high:.3f}] over {report.n_users} users "
        f"({report.n_test_pairs} held-out pairs, {report.n_users_skipped} users skipped < {min_pairs} pairs)"
    )
    print(line)
    if report.gain is not None and scorer != "global":
        print(
            f"global: {report.global_mean_accuracy:.3f}; gain {report.gain:+.3f} "
            f"[95% CI {report.gain_ci_low:+.3f}, {report.gain_ci_high:+.3f}], "
            f"{report.users_improved} users better, {report.users_worse} worse"
        )
    return report.model_dump(mode="json")
