"""`persona import`: JSONL(.gz) files into users' preference logs; bad lines reported; idempotent."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from middleware.cli import app as cli_app
from middleware.config import Settings
from middleware.preferences.importer import run_import
from tests.support.stored import stored_records as stream

SHARED_TLDR = Path(__file__).resolve().parents[2] / "shared" / "data" / "tldr_feedback.jsonl.gz"


def row(user: str, i: int, **extra: Any) -> dict[str, Any]:
    return {
        "user_id": user,
        "context": [{"role": "user", "content": f"prompt {i}"}],
        "chosen": {"role": "assistant", "content": f"chosen {i}"},
        "rejected": {"role": "assistant", "content": f"rejected {i}"},
        "rationale": f"because {i}",
        **extra,
    }


def write_jsonl(path: Path, lines: list[str]) -> Path:
    data = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def settings_for(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, embedded_redis=False)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
async def test_import_reports_bad_lines_and_is_idempotent(
    redis_url: str, tmp_path: Path, suffix: str
) -> None:
    lines = [
        json.dumps(row("u1", 1)),
        "{not json",  # line 2
        json.dumps(row("u2", 2)),
        "",  # blank lines are skipped
        json.dumps({"user_id": "u1", "context": []}),  # line 5: no chosen/rejected
        json.dumps(row("bad\tuser", 6)),  # line 6: a control character
        json.dumps(row("u1", 7)),
        json.dumps(row("u1", 1)),  # an exact repeat of line 1
    ]
    path = write_jsonl(tmp_path / f"prefs{suffix}", lines)
    summary = await run_import(settings_for(redis_url), path, format="native", tenant="acme", progress=False)
    assert (summary["lines"], summary["imported"], summary["duplicates"], summary["bad"]) == (7, 3, 1, 3)
    assert summary["users"] == 2
    assert [b["line"] for b in summary["bad_lines"]] == [2, 5, 6]
    assert "user" in summary["bad_lines"][2]["error"].lower()
    assert [p["chosen"]["content"] for p in stream(redis_url, "acme", "u1")] == ["chosen 1", "chosen 7"]
    assert stream(redis_url, "acme", "u1")[0]["rationale"] == "because 1"

    again = await run_import(settings_for(redis_url), path, format="native", tenant="acme", progress=False)
    assert (again["imported"], again["duplicates"]) == (0, 4)
    assert len(stream(redis_url, "acme", "u1")) == 2 and len(stream(redis_url, "acme", "u2")) == 1


async def test_import_in_small_batches_gives_the_same_result(redis_url: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "many.jsonl", [json.dumps(row(f"u{i % 7}", i)) for i in range(100)])
    summary = await run_import(
        settings_for(redis_url), path, format="native", tenant="t", batch_size=9, progress=False
    )
    assert (summary["imported"], summary["users"]) == (100, 7)
    assert [p["chosen"]["content"] for p in stream(redis_url, "t", "u3")] == [
        f"chosen {i}" for i in range(100) if i % 7 == 3
    ]


async def test_summarize_from_feedback_format(redis_url: str, tmp_path: Path) -> None:
    comparison = {
        "info": {"id": "t3_abc", "post": "my cat opens the fridge", "title": "Cat", "subreddit": "cats"},
        "summaries": [{"text": "A cat opens fridges.", "note": "concise"}, {"text": "Cat.", "note": ""}],
        "choice": 0,
        "worker": "labeler7",
        "batch": "batch13",
    }
    path = write_jsonl(
        tmp_path / "sff.jsonl", [json.dumps(comparison), json.dumps({**comparison, "choice": 5})]
    )
    summary = await run_import(
        settings_for(redis_url), path, format="summarize-from-feedback", tenant="default", progress=False
    )
    assert (summary["imported"], summary["bad"]) == (1, 1)
    assert summary["bad_lines"][0]["line"] == 2
    [pair] = stream(redis_url, "default", "labeler7")
    assert pair["chosen"]["content"] == "A cat opens fridges." and pair["rejected"]["content"] == "Cat."
    assert "my cat opens the fridge" in pair["context"][0]["content"]


def test_cli_import_prints_a_summary_and_fails_on_bad_lines(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONA_REDIS_URL", redis_url)
    monkeypatch.setenv("PERSONA_EMBEDDED_REDIS", "false")
    good = write_jsonl(tmp_path / "good.jsonl.gz", [json.dumps(row("u1", i)) for i in range(3)])
    result = CliRunner().invoke(cli_app, ["import", str(good), "--format", "native", "--tenant", "acme"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["imported"] == 3 and summary["bad_lines"] == []
    assert "3 lines" in result.stderr  # the progress bar goes to stderr

    bad = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(row("u1", 0)), "oops"])
    result = CliRunner().invoke(cli_app, ["import", str(bad), "--tenant", "acme"])
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["duplicates"] == 1 and summary["bad_lines"][0]["line"] == 2


@pytest.mark.skipif(not SHARED_TLDR.exists(), reason="shared data not present")
async def test_import_shared_tldr_file(redis_url: str) -> None:
    settings = settings_for(redis_url)
    summary = await run_import(settings, SHARED_TLDR, format="native", tenant="default", progress=False)
    assert (summary["lines"], summary["imported"], summary["bad"], summary["users"]) == (1771, 1771, 0, 30)
    again = await run_import(settings, SHARED_TLDR, format="personalrewardbench", progress=False)
    assert (again["imported"], again["duplicates"]) == (0, 1771)
