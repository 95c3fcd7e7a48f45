"""`persona eval`: run the offline protocol on a pairs file and write a JSON report and a PNG plot."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from middleware.config import Settings
from middleware.evaluation.judge_scorer import LLMJudgeScorer
from middleware.evaluation.offline import DEFAULT_MIN_PAIRS, evaluate, plot_per_user
from middleware.evaluation.router_eval import describe, router_accuracy
from middleware.evaluation.scorers import GlobalScorer, LoraScorer, make_scorer
from middleware.preferences.formats import load_pairs_by_user

JUDGES = ("judge", "judge-default")
LLM_TOTALS = ("calls", "prompt_tokens", "completion_tokens", "total_tokens")


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
    model: str | None = None,
    settings: Settings | None = None,
    quantize: str | None = None,
) -> dict[str, Any]:
    """Evaluate `scorer` on `data` (per-user time-ordered hold-out); returns the report as a dict.

    `settings` (default `Settings()`, i.e. the PERSONA_* environment) give the LLM of the judges
    (`judge`, `judge-default`, with `model`) and the threads, encoder quantization and cache of the
    global/lora scorers (`quantize` overrides `lora_quantize`); `judge` is compared with
    `judge-default`, the others with the global scorer.
    """
    if settings is None:
        settings = Settings()  # built once, here, from the PERSONA_* environment
    quantize = quantize or settings.lora_quantize
    encoder_opts: dict[str, Any] = {
        "num_threads": settings.torch_threads,
        "quantize": quantize,
        "cache_dir": Path(settings.cache_dir),
    }
    pairs_by_user = load_pairs_by_user(data, format)
    opts: dict[str, Any] = {"seed": seed, **(scorer_opts or {})}
    if scorer in ("global", "lora", "lora-other"):
        opts = {**encoder_opts, **opts}
    if scorer in JUDGES and opts.get("judge") is None:
        opts.update(settings=settings, model=model or opts.get("model"))
    main = make_scorer(scorer, **opts)
    reference = None  # the global scorer (the default judge for the judge), for the per-user gain
    baseline_name = "global"
    if isinstance(main, LoraScorer):
        reference = main.as_global()
    elif isinstance(main, LLMJudgeScorer) and main.personalized:
        if baseline:
            reference, baseline_name = make_scorer("judge-default", **opts), "judge-default"
    elif scorer != "global" and baseline and importlib.util.find_spec("torch") is not None:
        reference = make_scorer("global", seed=seed, **encoder_opts)
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
        baseline_name=baseline_name,
    )
    if scorer == "global":  # the global scorer is its own baseline: gain 0 by definition
        report.global_mean_accuracy = report.mean_accuracy
        report.global_ci = report.ci
        for row in report.per_user:
            row.global_accuracy = row.accuracy
            row.gain = 0.0
        report.gain, report.gain_ci = 0.0, (0.0, 0.0)
        report.gain_ci_low, report.gain_ci_high = 0.0, 0.0
    if isinstance(main, GlobalScorer):
        report.notes["encoder"] = main.model.encoder.describe()
    if isinstance(main, LoraScorer):
        chosen = list(main.strengths_chosen.values())
        report.notes["adapter_strengths"] = {s: chosen.count(s) for s in sorted(set(chosen))}
        if main.adapter_bytes:
            report.notes["adapter_bytes"] = max(main.adapter_bytes.values())
    if isinstance(main, LLMJudgeScorer):
        report.notes["judge"] = main.summary()
        judges = [main, *([reference] if isinstance(reference, LLMJudgeScorer) else [])]
        if len(judges) > 1:
            report.notes["baseline_judge"] = judges[1].summary()
        totals = {k: sum(j.summary()[k] for j in judges) for k in LLM_TOTALS}
        report.notes["llm"] = {"model": main.model, **totals}
    # The context router on the same split (README "Contexts"): pure Python, a few seconds.
    report.notes["router"] = router_accuracy(
        pairs_by_user,
        min_pairs=settings.context_min_pairs,
        threshold=settings.context_route_threshold,
        train_fraction=train_fraction,
        seed=seed,
    )
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
            f"{report.baseline}: {report.global_mean_accuracy:.3f}; gain {report.gain:+.3f} "
            f"[95% CI {report.gain_ci_low:+.3f}, {report.gain_ci_high:+.3f}], "
            f"{report.users_improved} users better, {report.users_worse} worse"
        )
    print(describe(report.notes["router"]))
    if "llm" in report.notes:
        llm, judge = report.notes["llm"], report.notes["judge"]
        print(
            f"LLM {llm['model']}: {llm['calls']} calls, {llm['total_tokens']} tokens; "
            f"{judge['users_induced']} users with an induced persona, {judge['users_fallback']} fell back "
            f"to no persona {judge['fallback_reasons'] or ''}".rstrip()
            + (f"; {judge['judge_errors']} judge calls failed" if judge["judge_errors"] else "")
        )
    return report.model_dump(mode="json")


def run_cold_start(
    data: Path,
    users: int | None,
    out: Path | None,
    plot: Path | None,
    format: str = "native",
    seed: int = 0,
    *,
    own_pairs: tuple[int | None, ...] | None = None,
    own_users: int | None = None,
    folds: int | None = None,
    segments_k: int | None = None,
    member_cap: int | None = None,
    max_pool: int | None = None,
    train_fraction: float = 0.7,
    progress: bool = True,
    settings: Settings | None = None,
    quantize: str | None = None,
    model_opts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`persona eval --cold-start`: the cold-start curve of the lora family (`cold_start.py`); prints the
    table, writes the JSON report to `out` and the chart to `plot`; returns the report as a dict."""
    from middleware.evaluation import cold_start
    from middleware.rerank.lora import LoraRewardModel, TextEncoder

    if settings is None:
        settings = Settings()
    opts: dict[str, Any] = {"seed": seed, "num_threads": settings.torch_threads, **(model_opts or {})}
    encoder = TextEncoder(
        opts.pop("encoder_path", None),
        quantize=quantize or settings.lora_quantize,
        cache_dir=Path(settings.cache_dir),
        **({"max_length": opts.pop("max_length")} if "max_length" in opts else {}),
    )

    def factory() -> Any:
        return LoraRewardModel(encoder, cache_size=100_000, **opts)

    report = cold_start.cold_start_curve(
        load_pairs_by_user(data, format),
        model_factory=factory,
        own_pairs=own_pairs or cold_start.DEFAULT_OWN_PAIRS,
        users=users,
        own_users=own_users,
        folds=folds or cold_start.DEFAULT_FOLDS,
        segments_k=segments_k or cold_start.DEFAULT_SEGMENTS_K,
        member_cap=member_cap or cold_start.DEFAULT_MEMBER_CAP,
        max_pool=max_pool or cold_start.DEFAULT_MAX_POOL,
        train_fraction=train_fraction,
        seed=seed,
        progress=progress,
        data=str(data),
    )
    report.notes["encoder"] = encoder.describe()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report.to_json())
    if plot is not None:
        cold_start.plot_curve(report, plot)
    print(cold_start.format_table(report))
    print(
        f"({report.n_users} users, own adapters for {report.n_own_users}; {report.n_test_pairs} held-out pairs, {report.folds} folds, k={report.segments_k} segments, {report.elapsed_s:.0f} s)"
    )
    return report.model_dump(mode="json")
