"""The statistics of online evaluation reports: exact binomial tests, bootstraps, balanced orders."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from middleware.evaluation.online import (
    CHANCE,
    CONDITIONS,
    Outcome,
    balanced_order,
    binomial_test,
    bootstrap_clustered,
    bootstrap_trials,
    label_bias_test,
    report,
)


def brute_force_p(k: int, n: int, p: float) -> float:
    probs = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    return min(1.0, sum(q for q in probs if q <= probs[k] * (1 + 1e-7)))


def test_binomial_test_matches_known_values_and_brute_force() -> None:
    assert binomial_test(9, 10) == pytest.approx(0.021484375)
    assert binomial_test(10, 10) == pytest.approx(2 * 0.5**10)
    assert binomial_test(5, 10) == 1.0
    assert binomial_test(0, 0) == 1.0
    assert binomial_test(3, 10) == binomial_test(7, 10)
    for n in (1, 7, 20):
        for k in range(n + 1):
            assert binomial_test(k, n, CHANCE) == pytest.approx(brute_force_p(k, n, CHANCE))
    with pytest.raises(ValueError):
        binomial_test(11, 10)


def test_every_block_of_six_trials_uses_each_order_once_and_balances_positions() -> None:
    orders = [balanced_order("seed", "alice", i) for i in range(18)]
    for block in range(3):
        assert sorted(orders[6 * block : 6 * block + 6]) == sorted(itertools.permutations(CONDITIONS))
    for label in range(3):
        assert {c: sum(o[label] == c for o in orders) for c in CONDITIONS} == dict.fromkeys(CONDITIONS, 6)
    # Deterministic from the run's secret seed, and shuffled differently per user and per block.
    assert orders == [balanced_order("seed", "alice", i) for i in range(18)]
    assert orders[:6] != orders[6:12] or orders[6:12] != orders[12:18]
    others = [balanced_order("seed", "bob", i) for i in range(18)]
    assert others != orders


def test_per_user_bootstrap_of_a_unanimous_user_is_a_point_and_of_a_mixed_user_brackets_the_rate() -> None:
    rng = np.random.default_rng(0)
    assert bootstrap_trials(["own"] * 8, resamples=500, level=0.95, rng=rng) == [
        (1.0, 1.0),
        (0.0, 0.0),
        (0.0, 0.0),
    ]
    assert bootstrap_trials([], resamples=500, level=0.95, rng=rng) is None
    picks = ["own"] * 10 + ["other"] * 5 + ["baseline"] * 5
    ci = bootstrap_trials(picks, resamples=2000, level=0.95, rng=rng)
    assert ci is not None
    assert ci[0][0] < 0.5 < ci[0][1] and ci[0][1] - ci[0][0] < 0.6


def test_pooled_bootstrap_resamples_users_so_disagreeing_users_widen_the_interval() -> None:
    rng = np.random.default_rng(1)
    # Two users who disagree completely: trial-level resampling would give a tight 0.5; users resampled
    # first make the interval span nearly everything, as two people should.
    users = [["own"] * 30, ["baseline"] * 30]
    clustered = bootstrap_clustered(users, resamples=2000, level=0.95, rng=rng)
    pooled_trials = bootstrap_trials(users[0] + users[1], resamples=2000, level=0.95, rng=rng)
    assert clustered is not None and pooled_trials is not None
    assert clustered[0] == (0.0, 1.0)
    assert pooled_trials[0][1] - pooled_trials[0][0] < 0.4


def test_report_counts_ties_skips_and_pending_and_tests_head_to_head() -> None:
    order = ("own", "other", "baseline")
    outcomes = [Outcome("u1", order, "own", "u2")] * 9 + [
        Outcome("u1", order, "baseline", "u2"),
        Outcome("u1", order, "tie", "u2"),
        Outcome("u1", order, "skip", "u2"),
        Outcome("u1", order, None, "u2"),
    ]
    r = report(outcomes, users=["u1", "u2"], resamples=500)
    pooled = r["pooled"]
    assert (pooled["trials"], pooled["decided"], pooled["ties"], pooled["skips"], pooled["pending"]) == (
        13,
        10,
        1,
        1,
        1,
    )
    assert pooled["wins"] == {"own": 9, "other": 0, "baseline": 1}
    assert pooled["tests"]["own_vs_baseline"]["p_value"] == pytest.approx(0.021484375)
    assert pooled["tests"]["own_vs_other"]["n"] == 9
    assert pooled["users"] == 1
    assert [u["user"] for u in r["per_user"]] == ["u1", "u2"]
    assert r["per_user"][1]["trials"] == 0 and r["per_user"][1]["win_rate"]["own"]["rate"] is None
    # Always the same order here: A was always `own`, so position balance is visibly broken.
    assert r["positions"]["assigned"]["A"] == {"own": 13, "other": 0, "baseline": 0}
    assert r["positions"]["picked_by_label"] == {"A": 9, "B": 0, "C": 1}
    assert r["positions"]["label_bias_test"]["significant"] is True
    assert r["other_personas"] == {"u2": 13}


def test_label_bias_test_is_chi_square_with_two_degrees_of_freedom() -> None:
    even = label_bias_test([10, 10, 10])
    assert even is not None and even["p_value"] == 1.0 and even["significant"] is False
    skewed = label_bias_test([20, 5, 5])
    assert skewed is not None and skewed["chi2"] == pytest.approx(15.0)
    assert skewed["p_value"] == pytest.approx(math.exp(-7.5))
    assert label_bias_test([0, 0, 0]) is None
