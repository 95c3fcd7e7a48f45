"""The offline protocol (docs/METHOD.md §4, PersonalRewardBench style).

For each user with at least `min_pairs` pairs, the latest ~30% are held out (`time_split`). The scorer
is fitted on the train parts only, then asked about every held-out pair in both orders; a pair counts
as correct only when the chosen completion scores strictly higher in both orders (a tie, or an answer
that flips with the order, is wrong). The report gives the mean of per-user accuracies with a bootstrap
95% CI over users and, when a baseline (the global scorer) is given, each user's gain over it with the
CI of the mean gain.

A `PairwiseScorer` (an LLM judge) answers for whole pairs instead of scoring candidates: for each
held-out pair it gives its pick with the chosen completion shown first ("A") and shown second ("B");
the same rule applies, the pair is correct only when the picks are "A" and then "B".
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import orjson
from pydantic import BaseModel, Field

from middleware.errors import NotEnoughData
from middleware.models import Message, PreferencePair, message_text
from middleware.preferences.formats import time_split

DEFAULT_MIN_PAIRS = 10


@runtime_checkable
class Scorer(Protocol):
    """Anything that learns from train pairs and scores candidates for one user (higher = preferred)."""

    def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None: ...

    def score(self, user: str, context: list[Message], candidates: list[str]) -> list[float]: ...


@runtime_checkable
class PairwiseScorer(Protocol):
    """A scorer that judges whole pairs (an LLM judge), every held-out pair in both orders."""

    def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None: ...

    def judge_orders(
        self, test_by_user: dict[str, list[PreferencePair]], *, progress: bool = False
    ) -> dict[str, list[tuple[Literal["A", "B"] | None, Literal["A", "B"] | None]]]:
        """Per user, per pair: the pick with the chosen completion as A, then as B (None: no answer)."""
        ...


AnyScorer = Scorer | PairwiseScorer


class UserResult(BaseModel):
    user: str
    n_train: int
    n_test: int
    correct: int
    accuracy: float
    global_accuracy: float | None = Field(default=None, description="the baseline scorer's accuracy")
    gain: float | None = None


class EvalReport(BaseModel):
    scorer: str
    data: str | None = None
    seed: int = 0
    train_fraction: float
    min_pairs: int
    n_users: int
    n_users_skipped: int = Field(description="users with fewer than min_pairs pairs")
    n_train_pairs: int
    n_test_pairs: int
    mean_accuracy: float
    ci_low: float
    ci_high: float
    ci: tuple[float, float]
    pooled_accuracy: float
    baseline: str | None = Field(
        default=None, description="the scorer the global_* fields and gains refer to"
    )
    global_mean_accuracy: float | None = None
    global_ci: tuple[float, float] | None = None
    gain: float | None = None
    gain_ci: tuple[float, float] | None = None
    gain_ci_low: float | None = None
    gain_ci_high: float | None = None
    users_improved: int | None = None
    users_worse: int | None = None
    elapsed_s: float = 0.0
    per_user: list[UserResult]
    notes: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> str:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode()


def bootstrap_ci(
    values: Sequence[float], n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` (resampling the values with replacement)."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        raise NotEnoughData("bootstrap_ci needs at least one value")
    if arr.size == 1:
        return float(arr[0]), float(arr[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n, arr.size))
    means = arr[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    # the percentile interval always brackets the sample mean for a symmetric level; clamp rounding
    mean = float(arr.mean())
    return float(min(low, mean)), float(max(high, mean))


def _judge_pair(scorer: Scorer, pair: PreferencePair) -> bool:
    """True when `chosen` wins strictly in both orders."""
    chosen = message_text(pair.chosen)
    rejected = message_text(pair.rejected)
    first = scorer.score(pair.user_id, pair.context, [chosen, rejected])
    second = scorer.score(pair.user_id, pair.context, [rejected, chosen])
    return bool(first[0] > first[1] and second[1] > second[0])


def split_users(
    pairs_by_user: dict[str, list[PreferencePair]],
    *,
    train_fraction: float = 0.7,
    min_pairs: int = DEFAULT_MIN_PAIRS,
    users: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, list[PreferencePair]], dict[str, list[PreferencePair]], int]:
    """(train_by_user, test_by_user, n_skipped).

    Users below `min_pairs` are not evaluated; their pairs still train (they are nobody's test data).
    With `users=N`, N eligible users are drawn at random (seeded); the others' train parts still train.
    """
    eligible = sorted(u for u, ps in pairs_by_user.items() if len(ps) >= min_pairs)
    skipped = [u for u in pairs_by_user if len(pairs_by_user[u]) < min_pairs]
    chosen = set(eligible)
    if users is not None and users < len(eligible):
        chosen = set(random.Random(seed).sample(eligible, users))
    train: dict[str, list[PreferencePair]] = {}
    test: dict[str, list[PreferencePair]] = {}
    for user in eligible:
        tr, te = time_split(pairs_by_user[user], train_fraction)
        train[user] = tr
        if user in chosen:
            test[user] = te
    for user in skipped:
        train[user] = list(pairs_by_user[user])
    return train, test, len(skipped)


def _score_users(
    scorer: AnyScorer, test: dict[str, list[PreferencePair]], progress: bool, label: str
) -> dict[str, int]:
    if isinstance(scorer, PairwiseScorer):
        orders = scorer.judge_orders(test, progress=progress)
        return {user: sum(first == "A" and second == "B" for first, second in orders[user]) for user in test}
    total = sum(len(v) for v in test.values())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"eval {label}", unit="pair", leave=False)
    correct: dict[str, int] = {}
    try:
        for user in sorted(test):
            hits = 0
            for pair in test[user]:
                hits += _judge_pair(scorer, pair)
                if bar is not None:
                    bar.update(1)
            correct[user] = hits
    finally:
        if bar is not None:
            bar.close()
    return correct


def evaluate(
    pairs_by_user: dict[str, list[PreferencePair]],
    scorer: AnyScorer,
    *,
    train_fraction: float = 0.7,
    min_pairs: int = DEFAULT_MIN_PAIRS,
    users: int | None = None,
    seed: int = 0,
    progress: bool = True,
    baseline: AnyScorer | None = None,
    scorer_name: str | None = None,
    data: str | None = None,
    baseline_name: str = "global",
) -> EvalReport:
    """Run the offline protocol; `baseline` (usually the global scorer) gives the per-user gain."""
    started = time.perf_counter()
    train, test, n_skipped = split_users(
        pairs_by_user, train_fraction=train_fraction, min_pairs=min_pairs, users=users, seed=seed
    )
    if not test:
        raise NotEnoughData(f"no user has at least {min_pairs} pairs")
    scorer.fit(train)
    correct = _score_users(scorer, test, progress, scorer_name or type(scorer).__name__)
    base_correct: dict[str, int] | None = None
    if baseline is not None:
        if baseline is not scorer:
            baseline.fit(train)
        base_correct = _score_users(baseline, test, progress, baseline_name)

    rows: list[UserResult] = []
    for user in sorted(test):
        n = len(test[user])
        acc = correct[user] / n
        row = UserResult(user=user, n_train=len(train[user]), n_test=n, correct=correct[user], accuracy=acc)
        if base_correct is not None:
            row.global_accuracy = base_correct[user] / n
            row.gain = acc - row.global_accuracy
        rows.append(row)

    accs = [r.accuracy for r in rows]
    low, high = bootstrap_ci(accs, seed=seed)
    n_test = sum(r.n_test for r in rows)
    report = EvalReport(
        scorer=scorer_name or type(scorer).__name__,
        data=data,
        seed=seed,
        train_fraction=train_fraction,
        min_pairs=min_pairs,
        n_users=len(rows),
        n_users_skipped=n_skipped,
        n_train_pairs=sum(len(v) for v in train.values()),
        n_test_pairs=n_test,
        mean_accuracy=float(np.mean(accs)),
        ci_low=low,
        ci_high=high,
        ci=(low, high),
        pooled_accuracy=sum(r.correct for r in rows) / n_test,
        per_user=rows,
    )
    if base_correct is not None:
        report.baseline = baseline_name
        gaccs = [r.global_accuracy or 0.0 for r in rows]
        gains = [r.gain or 0.0 for r in rows]
        report.global_mean_accuracy = float(np.mean(gaccs))
        report.global_ci = bootstrap_ci(gaccs, seed=seed)
        report.gain = float(np.mean(gains))
        report.gain_ci = bootstrap_ci(gains, seed=seed)
        report.gain_ci_low, report.gain_ci_high = report.gain_ci
        report.users_improved = sum(g > 0 for g in gains)
        report.users_worse = sum(g < 0 for g in gains)
    report.elapsed_s = time.perf_counter() - started
    return report


def plot_per_user(report: EvalReport, path: str | Path) -> Path:
    """PNG of per-user accuracy, personalized vs global (users sorted by global accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(report.per_user)
    has_global = all(r.global_accuracy is not None for r in rows)
    rows.sort(key=lambda r: ((r.global_accuracy if has_global else r.accuracy) or 0.0, r.user))
    xs = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, min(0.12 * len(rows) + 4, 24.0)), 4.5))
    if has_global:
        ax.scatter(
            xs,
            [r.global_accuracy or 0.0 for r in rows],
            s=14,
            marker="o",
            label=f"{report.baseline or 'global'} (mean {report.global_mean_accuracy:.3f})",
            color="#888888",
        )
    ax.scatter(
        xs,
        [r.accuracy for r in rows],
        s=14,
        marker="x",
        label=f"{report.scorer} (mean {report.mean_accuracy:.3f})",
        color="#d62728",
    )
    ax.axhline(report.mean_accuracy, color="#d62728", lw=0.8, ls="--")
    if has_global and report.global_mean_accuracy is not None:
        ax.axhline(report.global_mean_accuracy, color="#888888", lw=0.8, ls="--")
    ax.set_xlabel(
        f"user (sorted by {report.baseline or 'global'} accuracy)"
        if has_global
        else "user (sorted by accuracy)"
    )
    ax.set_ylabel("held-out pairwise accuracy (both orders)")
    title = f"{report.scorer}: {report.mean_accuracy:.3f} [{report.ci_low:.3f}, {report.ci_high:.3f}], {report.n_users} users"
    if report.gain is not None and report.gain_ci is not None:
        title += f"; gain {report.gain:+.3f} [{report.gain_ci[0]:+.3f}, {report.gain_ci[1]:+.3f}]"
    ax.set_title(title, fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
