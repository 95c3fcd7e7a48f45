"""The README documents every setting and the two set-up commands CI runs."""

from __future__ import annotations

from pathlib import Path

from middleware.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`PERSONA_{name.upper()}`" not in readme]
    assert missing == []


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "./scripts/test.sh" in readme and "./scripts/serve.sh" in readme
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
