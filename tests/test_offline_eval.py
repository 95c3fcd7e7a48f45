"""The offline protocol: reading pair files, the time split, both-orders judging, CIs, report, plot."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from middleware.evaluation.cli_eval import run_eval
from middleware.evaluation.offline import bootstrap_ci, evaluate, plot_per_user
from middleware.evaluation.scorers import make_scorer
from middleware.models import Message, PreferencePair
from middleware.preferences.formats import iter_pairs, load_pairs_by_user, time_split


def _row(user: str, i: int, chosen: str, rejected: str, ts: str | None = None) -> dict[str, Any]:
    return {
        "user_id": user,
        "context": [{"role": "user", "content": f"question {i}"}],
        "chosen": {"role": "assistant", "content": chosen},
        "rejected": {"role": "assistant", "content": rejected},
        "rationale": None,
        "timestamp": ts,
        "source": "test",
        "item_id": str(i),
    }


def _write(path: Path, rows: list[dict[str, Any]], extra_lines: Sequence[str] = ()) -> Path:
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def _synthetic(n_users: int = 4, n_pairs: int = 12) -> list[dict[str, Any]]:
    rows = []
    for u in range(n_users):
        for i in range(n_pairs):
            # chosen is marked with "good", and is shorter for even users, longer for odd users
            good = f"good answer {i}" + (" with many extra words" if u % 2 else "")
            bad = f"bad answer {i}" + ("" if u % 2 else " padded with extra words")
            rows.append(_row(f"user{u}", i, good, bad, ts=f"2024-01-{i + 1:02d}T00:00:00"))
    return rows


class Constant:
    def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None:
        return None

    def score(self, user: str, context: list[Message], candidates: list[str]) -> list[float]:
        return [1.0 for _ in candidates]


class FirstWins:
    """Order-dependent: always prefers whatever is shown first."""

    def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None:
        return None

    def score(self, user: str, context: list[Message], candidates: list[str]) -> list[float]:
        return [float(len(candidates) - i) for i in range(len(candidates))]


class Oracle:
    def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None:
        return None

    def score(self, user: str, context: list[Message], candidates: list[str]) -> list[float]:
        return [1.0 if c.startswith("good") else 0.0 for c in candidates]


def test_iter_pairs_reads_gz_and_reports_bad_lines(tmp_path: Path) -> None:
    rows = _synthetic(1, 3)
    path = _write(tmp_path / "pairs.jsonl.gz", rows, extra_lines=["{not json", json.dumps({"user_id": "x"})])
    items = list(iter_pairs(path))
    assert [n for n, _ in items] == [1, 2, 3, 4, 5]
    assert all(isinstance(p, PreferencePair) for _, p in items[:3])
    assert isinstance(items[3][1], Exception) and isinstance(items[4][1], Exception)
    assert isinstance(items[0][1], PreferencePair) and items[0][1].chosen.content == "good answer 0"
    assert set(load_pairs_by_user(path)) == {"user0"}


def test_personalrewardbench_rows_with_plain_string_completions(tmp_path: Path) -> None:
    row = {"user_id": "u", "context": "hi", "chosen": "yes", "rejected": "no"}
    path = _write(tmp_path / "prb.jsonl", [row])
    ((_, pair),) = list(iter_pairs(path, "personalrewardbench"))
    assert isinstance(pair, PreferencePair)
    assert pair.context[0].content == "hi" and pair.chosen.content == "yes" and pair.rejected.content == "no"


def test_summarize_from_feedback_format(tmp_path: Path) -> None:
    row = {
        "info": {"id": "t3_abc", "post": "My post body", "title": "A title", "subreddit": "relationships"},
        "split": "train",
        "summaries": [
            {"text": " first summary", "policy": "a", "note": "too long"},
            {"text": " second", "policy": "b"},
        ],
        "choice": 1,
        "worker": "w42",
        "batch": "batch13",
        "extra": {"confidence": 7},
    }
    path = _write(tmp_path / "sff.jsonl", [row])
    ((_, pair),) = list(iter_pairs(path, "summarize-from-feedback"))
    assert isinstance(pair, PreferencePair)
    assert pair.user_id == "w42"
    assert pair.chosen.content == " second" and pair.rejected.content == " first summary"
    assert "POST: My post body" in pair.context[0].content and "r/relationships" in pair.context[0].content
    assert pair.rationale == "too long" and pair.item_id == "t3_abc"


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.jsonl", _synthetic(1, 1))
    with pytest.raises(Exception, match="unknown pair format"):
        list(iter_pairs(path, "nope"))


def test_time_split_sorts_by_timestamp_else_keeps_order() -> None:
    pairs = [
        PreferencePair.model_validate(_row("u", i, "a", "b", ts=f"2024-01-{10 - i:02d}")) for i in range(10)
    ]
    train, test = time_split(pairs, 0.7)
    assert len(train) == 7 and len(test) == 3
    assert [p.item_id for p in test] == ["2", "1", "0"]  # the latest timestamps
    untimed = [PreferencePair.model_validate(_row("u", i, "a", "b")) for i in range(10)]
    train, test = time_split(untimed, 0.7)
    assert [p.item_id for p in test] == ["7", "8", "9"]


def test_constant_order_dependent_and_oracle_scorers() -> None:
    pairs_by_user: dict[str, list[PreferencePair]] = {}
    for r in _synthetic():
        p = PreferencePair.model_validate(r)
        pairs_by_user.setdefault(p.user_id, []).append(p)
    const = evaluate(pairs_by_user, Constant(), progress=False, min_pairs=5)
    first = evaluate(pairs_by_user, FirstWins(), progress=False, min_pairs=5)
    oracle = evaluate(pairs_by_user, Oracle(), progress=False, min_pairs=5, baseline=Constant())
    assert const.mean_accuracy == 0.0  # ties are wrong
    assert first.mean_accuracy == 0.0  # order-dependent answers are wrong
    assert oracle.mean_accuracy == 1.0
    assert oracle.gain == 1.0 and oracle.users_improved == oracle.n_users == 4
    assert oracle.n_test_pairs == 4 * 4  # 12 pairs, 30% held out per user


def test_min_pairs_skips_and_counts_users() -> None:
    rows = _synthetic(3, 12) + [_row("tiny", i, "good x", "bad x") for i in range(3)]
    pairs_by_user: dict[str, list[PreferencePair]] = {}
    for r in rows:
        p = PreferencePair.model_validate(r)
        pairs_by_user.setdefault(p.user_id, []).append(p)
    report = evaluate(pairs_by_user, Oracle(), progress=False, min_pairs=10)
    assert report.n_users == 3 and report.n_users_skipped == 1
    report = evaluate(pairs_by_user, Oracle(), progress=False, min_pairs=10, users=2)
    assert report.n_users == 2


def test_bootstrap_ci_has_the_width_of_the_sampling_distribution() -> None:
    # 100 values of 0 or 1: the mean of a resample is Binomial(100, p) / 100, so the 95% percentile
    # interval is about p ± 1.96 * sqrt(p (1 - p) / 100).
    half = [0.0] * 50 + [1.0] * 50
    low, high = bootstrap_ci(half, n=4000, seed=1)
    assert 0.38 <= low <= 0.42 and 0.58 <= high <= 0.62
    skewed = [1.0] * 90 + [0.0] * 10
    low, high = bootstrap_ci(skewed, n=4000, seed=1)
    assert 0.83 <= low <= 0.86 and 0.95 <= high <= 0.97
    assert bootstrap_ci(skewed, n=4000, seed=1) == (low, high)  # seeded
    assert bootstrap_ci([0.5]) == (0.5, 0.5)


def test_length_scorer_learns_direction() -> None:
    scorer = make_scorer("length")
    short_wins = [PreferencePair.model_validate(_row("u", i, "short", "much longer text")) for i in range(5)]
    scorer.fit({"u": short_wins})
    a, b = scorer.score("u", [], ["tiny", "a lot longer candidate"])
    assert a > b


def test_random_scorer_is_order_independent() -> None:
    scorer = make_scorer("random", seed=3)
    a = scorer.score("u", [], ["x", "y"])
    b = scorer.score("u", [], ["y", "x"])
    assert a == b[::-1]


def test_judge_scorer_needs_a_callable_and_is_asked_in_both_orders() -> None:
    with pytest.raises(Exception, match="needs an LLM"):
        make_scorer("judge")
    asked: list[tuple[str, str, list[str]]] = []

    def prefers_longer(user: str, context: list[Message], candidates: list[str]) -> list[float]:
        asked.append((user, str(context[-1].content), list(candidates)))
        return [float(len(c)) for c in candidates]

    judge = make_scorer("judge", judge=prefers_longer)
    longer_wins = [PreferencePair.model_validate(_row("u", i, "a longer answer", "short")) for i in range(10)]
    shorter_wins = [PreferencePair.model_validate(_row("v", i, "short", "a longer answer")) for i in range(10)]
    report = evaluate({"u": longer_wins, "v": shorter_wins}, judge, progress=False, min_pairs=5)
    assert {u.user: u.accuracy for u in report.per_user} == {"u": 1.0, "v": 0.0}
    # Each held-out pair of "u" (the latest 3 of 10) was put to the judge in both orders.
    held_out = {f"question {i}" for i in (7, 8, 9)}
    assert sorted(c for user, q, c in asked if user == "u" and q in held_out) == sorted(
        [["a longer answer", "short"], ["short", "a longer answer"]] * 3
    )


def test_run_eval_writes_report_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "pairs.jsonl.gz", _synthetic(4, 12))
    out, plot = tmp_path / "report.json", tmp_path / "plot.png"
    result = run_eval(data, "length", None, out, plot, "native", 0, progress=False, baseline=False)
    report = json.loads(out.read_text())
    for key in ("mean_accuracy", "ci", "ci_low", "ci_high", "per_user", "n_users", "n_users_skipped"):
        assert key in report
    assert report["n_users"] == 4 and len(report["per_user"]) == 4
    # even users prefer shorter, odd ones longer: a single global direction gets half of them right
    assert report["mean_accuracy"] == pytest.approx(0.5)
    assert result["mean_accuracy"] == report["mean_accuracy"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean per-user accuracy" in capsys.readouterr().out


def test_plot_with_global_series(tmp_path: Path) -> None:
    pairs_by_user: dict[str, list[PreferencePair]] = {}
    for r in _synthetic():
        p = PreferencePair.model_validate(r)
        pairs_by_user.setdefault(p.user_id, []).append(p)
    report = evaluate(
        pairs_by_user, Oracle(), progress=False, baseline=FirstWins(), scorer_name="oracle", min_pairs=5
    )
    assert report.gain is not None and report.gain_ci is not None
    assert report.gain_ci[0] <= report.gain <= report.gain_ci[1]
    path = plot_per_user(report, tmp_path / "sub" / "p.png")
    assert path.stat().st_size > 1000
    parsed = json.loads(report.to_json())
    assert {"global_mean_accuracy", "gain", "gain_ci"} <= set(parsed)
