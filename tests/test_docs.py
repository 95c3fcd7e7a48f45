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
    setup = readme.split("## Set-up", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in setup.splitlines() if line.strip()]
    assert commands == ["./scripts/serve.sh", "./scripts/test.sh"]
    # CI ends by running that same script, with no arguments (the whole suite)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    steps = [line for line in ci if line and not line.startswith("#")]
    assert steps[-1] == "bash scripts/test.sh"
