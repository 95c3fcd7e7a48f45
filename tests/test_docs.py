"""The README documents every setting (and nothing that is not one) and the two set-up commands CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from middleware.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`PERSONA_{name.upper()}`" not in readme]
    assert missing == []


def test_every_documented_variable_is_a_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"PERSONA_[A-Z0-9_]+", readme))
    settings = {f"PERSONA_{name.upper()}" for name in Settings.model_fields}
    assert sorted(documented - settings) == []


def test_settings_come_from_the_settings_class_only() -> None:
    """No server module reads a PERSONA_ variable from the raw environment (the docs could not see
    it); the SDK runs in the application's process and reads its own."""
    raw = re.compile(r"environ(?:\.get)?\s*[\[(]\s*[\"']PERSONA_|getenv\(\s*[\"']PERSONA_")
    readers = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "middleware").rglob("*.py"))
        if raw.search(path.read_text()) and path.parts[-2] != "sdk"
    ]
    assert readers == []


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in setup.splitlines() if line.strip()]
    assert commands == ["./scripts/serve.sh", "./scripts/test.sh"]
    # CI ends by running that same script, with no arguments (the whole suite)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    steps = [line for line in ci if line and not line.startswith("#")]
    assert steps[-1] == "bash scripts/test.sh"
