"""Statistics of an online own / other / baseline evaluation (docs/METHOD.md §4).

Input: one `Outcome` per trial (the user, the answer order shown, and what the user picked). Output:
a JSON-ready report with, per user and pooled,

- win rates of `own`, `other` and `baseline` over the *decided* trials (a pick of one answer); ties,
  skips and trials still waiting for a choice are counted and reported beside them, never dropped;
- percentile bootstrap 95% CIs of each win rate. Per user: the user's decided trials are resampled.
  Pooled: a cluster bootstrap, users resampled first, then trials within each drawn user, so that a
  few prolific users cannot make the interval look tighter than the number of people supports;
- exact two-sided binomial (sign) tests on head-to-head wins: own vs baseline and own vs other count
  only the trials won by one of the two conditions (under "no difference" each is then a fair coin);
  and own vs chance (1/3 of decided trials);
- how the order was balanced: how often each condition sat at each position, and how often each
  position was picked (a position bias check).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONDITIONS: tuple[str, ...] = ("own", "other", "baseline")
LABELS: tuple[str, ...] = ("A", "B", "C")
UNDECIDED = ("tie", "skip")
CHANCE = 1.0 / 3.0
ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_LEVEL = 0.95
POOLED_METHOD = "cluster bootstrap: users resampled with replacement, then trials within each user"
TEST_METHOD = "exact two-sided binomial test (math.comb)"


@dataclass(frozen=True)
class Outcome:
    """One trial as the analysis sees it.

    `order[i]` is the condition shown under label LABELS[i]. `picked` is a condition name, "tie",
    "skip", or None while the user has not chosen yet.
    """

    user: str
    order: tuple[str, ...]
    picked: str | None
    other_user: str | None = None


# --- the order answers are shown in ---------------------------------------------------------------
PERMUTATIONS: tuple[tuple[str, ...], ...] = tuple(itertools.permutations(CONDITIONS))


def balanced_order(seed: str, user: str, position: int) -> tuple[str, ...]:
    """The conditions under labels A, B, C for the user's `position`-th trial (0-based).

    Each block of six successive trials of a user uses all six permutations once, in an order
    shuffled per block from the run's secret seed: after every 6k trials each condition has sat
    exactly 2k times at every label, and at any moment no cell is off by more than the block size.
    """
    block, within = divmod(position, len(PERMUTATIONS))
    perms = list(PERMUTATIONS)
    random.Random(f"{seed}:{user}:{block}").shuffle(perms)
    return perms[within]


# --- exact binomial test --------------------------------------------------------------------------
def binomial_pmf(k: int, n: int, p: float) -> float:
    return math.comb(n, k) * p**k * (1.0 - p) ** (n - k)


def binomial_test(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial p-value: the total probability of outcomes no likelier than `k`."""
    if n <= 0:
        return 1.0
    if not 0 <= k <= n:
        raise ValueError("k must lie in 0..n")
    observed = binomial_pmf(k, n, p)
    tolerance = observed * (1.0 + 1e-7)
    total = sum(q for q in (binomial_pmf(i, n, p) for i in range(n + 1)) if q <= tolerance)
    return min(1.0, total)


def head_to_head(a_wins: int, b_wins: int, a: str, b: str) -> dict[str, Any]:
    n = a_wins + b_wins
    p_value = binomial_test(a_wins, n, 0.5)
    return {
        "a": a,
        "b": b,
        f"{a}_wins": a_wins,
        f"{b}_wins": b_wins,
        "n": n,
        "share_a": a_wins / n if n else None,
        "p_value": p_value,
        "significant": n > 0 and p_value < ALPHA,
        "better": (a if a_wins > b_wins else b) if n and p_value < ALPHA else None,
        "method": f"{TEST_METHOD} of {a} vs {b} wins among trials won by either, p=0.5",
    }


def chance_test(wins: int, decided: int, condition: str) -> dict[str, Any]:
    p_value = binomial_test(wins, decided, CHANCE)
    return {
        "condition": condition,
        "wins": wins,
        "n": decided,
        "chance": CHANCE,
        "p_value": p_value,
        "significant": decided > 0 and p_value < ALPHA,
        "method": f"{TEST_METHOD} of {condition} wins among decided trials, p=1/3",
    }


# --- bootstrap --------------------------------------------------------------------------------------
# Resampling n trials with replacement and counting each condition's wins is one multinomial draw with
# the observed shares; drawing a user t times and resampling their n trials each time is one
# multinomial draw of t*n. So both bootstraps below are exact and cost O(resamples x users).
def _shares(picks: Sequence[str]) -> np.ndarray:
    counts = np.array([sum(1 for p in picks if p == c) for c in CONDITIONS], dtype=float)
    shares: np.ndarray = counts / counts.sum()
    return shares


def _interval(wins: np.ndarray, totals: np.ndarray, level: float) -> list[tuple[float, float]]:
    rates = wins / totals[:, None]
    alpha = (1.0 - level) / 2.0
    bounds = np.quantile(rates, [alpha, 1.0 - alpha], axis=0)
    return [(float(bounds[0, c]), float(bounds[1, c])) for c in range(len(CONDITIONS))]


def bootstrap_trials(
    picks: Sequence[str], *, resamples: int, level: float, rng: np.random.Generator
) -> list[tuple[float, float]] | None:
    """CI of each condition's win rate, resampling one user's decided trials."""
    if not picks:
        return None
    wins = rng.multinomial(len(picks), _shares(picks), size=resamples).astype(float)
    return _interval(wins, np.full(resamples, float(len(picks))), level)


def bootstrap_clustered(
    picks_by_user: Sequence[Sequence[str]], *, resamples: int, level: float, rng: np.random.Generator
) -> list[tuple[float, float]] | None:
    """CI of each pooled win rate: resample users, then each drawn user's trials."""
    groups = [list(p) for p in picks_by_user if p]
    if not groups:
        return None
    draws = rng.integers(0, len(groups), size=(resamples, len(groups)))
    wins = np.zeros((resamples, len(CONDITIONS)))
    totals = np.zeros(resamples)
    for u, picks in enumerate(groups):
        times = (draws == u).sum(axis=1)
        wins += rng.multinomial(times * len(picks), _shares(picks))
        totals += times * len(picks)
    return _interval(wins, totals, level)


# --- summaries --------------------------------------------------------------------------------------
def _summary(outcomes: Sequence[Outcome], ci: list[tuple[float, float]] | None) -> dict[str, Any]:
    counts = Counter(o.picked for o in outcomes)
    decided = sum(counts[c] for c in CONDITIONS)
    win_rate: dict[str, Any] = {}
    for i, condition in enumerate(CONDITIONS):
        rate = counts[condition] / decided if decided else None
        low, high = ci[i] if ci else (None, None)
        if rate is not None and low is not None and high is not None:  # clamp rounding
            low, high = min(low, rate), max(high, rate)
        win_rate[condition] = {"rate": rate, "ci_low": low, "ci_high": high}
    return {
        "trials": len(outcomes),
        "decided": decided,
        "ties": counts["tie"],
        "skips": counts["skip"],
        "pending": counts[None],
        "wins": {c: counts[c] for c in CONDITIONS},
        "win_rate": win_rate,
        "tests": {
            "own_vs_baseline": head_to_head(counts["own"], counts["baseline"], "own", "baseline"),
            "own_vs_other": head_to_head(counts["own"], counts["other"], "own", "other"),
            "own_vs_chance": chance_test(counts["own"], decided, "own"),
        },
        "own_above_chance": bool(ci and decided and ci[0][0] > CHANCE),
    }


def _decided(outcomes: Iterable[Outcome]) -> list[str]:
    return [o.picked for o in outcomes if o.picked is not None and o.picked in CONDITIONS]


def position_balance(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    assigned = {label: dict.fromkeys(CONDITIONS, 0) for label in LABELS}
    picked_label: Counter[str] = Counter()
    for o in outcomes:
        for label, condition in zip(LABELS, o.order, strict=False):
            assigned[label][condition] += 1
        if o.picked in CONDITIONS and o.picked in o.order:
            picked_label[LABELS[o.order.index(o.picked)]] += 1
    cells = [n for row in assigned.values() for n in row.values()]
    return {
        "assigned": assigned,
        "max_cell_difference": (max(cells) - min(cells)) if outcomes else 0,
        "picked_by_label": {label: picked_label[label] for label in LABELS},
        "label_bias_test": label_bias_test([picked_label[label] for label in LABELS]),
    }


def label_bias_test(picked: Sequence[int]) -> dict[str, Any] | None:
    """Chi-square goodness of fit of the picked labels to uniform (df=2: p = exp(-x/2))."""
    total = sum(picked)
    if not total:
        return None
    expected = total / len(picked)
    statistic = sum((n - expected) ** 2 / expected for n in picked)
    p_value = math.exp(-statistic / 2.0)
    return {
        "chi2": statistic,
        "df": len(picked) - 1,
        "p_value": p_value,
        "significant": p_value < ALPHA,
        "method": "chi-square test that A, B and C are picked equally often (decided trials)",
    }


def report(
    outcomes: Sequence[Outcome],
    *,
    users: Sequence[str] = (),
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-user and pooled win rates, CIs, tests and position balance (JSON-ready).

    `users`: users to list even without trials (the run's users, in the run's order).
    """
    rng = np.random.default_rng(seed)
    users = list(dict.fromkeys([*users, *sorted({o.user for o in outcomes})]))
    by_user = {u: [o for o in outcomes if o.user == u] for u in users}
    per_user = []
    for user in users:
        picks = _decided(by_user[user])
        ci = bootstrap_trials(picks, resamples=resamples, level=level, rng=rng)
        per_user.append({"user": user, **_summary(by_user[user], ci)})
    pooled_ci = bootstrap_clustered(
        [_decided(by_user[u]) for u in users], resamples=resamples, level=level, rng=rng
    )
    pooled = {"users": sum(1 for u in users if by_user[u]), **_summary(outcomes, pooled_ci)}
    return {
        "conditions": list(CONDITIONS),
        "chance": CHANCE,
        "alpha": ALPHA,
        "bootstrap": {
            "resamples": resamples,
            "level": level,
            "seed": seed,
            "per_user": "trials of the user resampled with replacement",
            "pooled": POOLED_METHOD,
            "over": "decided trials (ties, skips and pending trials are reported, not resampled)",
        },
        "pooled": pooled,
        "per_user": per_user,
        "positions": position_balance(outcomes),
        "other_personas": dict(sorted(Counter(o.other_user for o in outcomes if o.other_user).items())),
    }
