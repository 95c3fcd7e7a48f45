"""The README documents every setting and the two set-up commands CI runs; docs/ is what code cites."""

from __future__ import annotations

import inspect
import re
import subprocess
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


# A path to a Markdown file as code and docs cite it: `docs/METHOD.md`, `README.md`, `sdk/README.md`.
MD_PATH = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b")
SECTION = re.compile(r"docs/METHOD\.md §(\d+)")
CITING = ("middleware", "tests", "benchmarks", "examples", "scripts", "sdk", "docs")


def _cited_in(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(errors="replace")
    return [(str(path.relative_to(ROOT)), m) for m in MD_PATH.findall(text) + SECTION.findall(text)]


def _repository_files(folder: str) -> list[Path]:
    """The folder's files that belong to the repository: tracked, or new and not git-ignored (no
    installed packages, no benchmark venvs)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", folder],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def test_every_markdown_file_cited_exists_in_the_repository() -> None:
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "pyproject.toml"]
    for folder in CITING:
        files += [p for p in _repository_files(folder) if p.suffix in {".py", ".md", ".toml", ".sh", ".j2"}]
    files = [p for p in files if p != Path(__file__).resolve()]  # this file names files to find them
    cited = [(where, target) for path in files for where, target in _cited_in(path) if target.endswith(".md")]
    assert any(target == "docs/ARCHITECTURE.md" for _, target in cited)
    missing = [(where, target) for where, target in cited if not (ROOT / target).is_file()]
    assert missing == []


def test_every_method_section_cited_exists() -> None:
    headings = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "METHOD.md").read_text(), re.MULTILINE))
    cited = {
        (where, number)
        for folder in ("middleware", "examples", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        for where, number in _cited_in(path)
        if number.isdigit()
    }
    assert cited, "docstrings cite docs/METHOD.md sections"
    assert sorted((where, n) for where, n in cited if n not in headings) == []


def test_the_redis_key_map_matches_store_keys() -> None:
    """docs/ARCHITECTURE.md lists every key builder of store/keys.py with the key it builds."""
    from middleware.store import keys

    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = []
    for name, builder in inspect.getmembers(keys, inspect.isfunction):
        if builder.__module__ != keys.__name__:
            continue
        params = list(inspect.signature(builder).parameters)
        key = builder(*[f"<{p}>" for p in params])
        rows.append(f"| `{name}({', '.join(params)})` | `{key}` |")
    assert len(rows) >= 20
    missing = [row for row in rows if row not in doc]
    assert missing == [], "add these rows to the key map of docs/ARCHITECTURE.md:\n" + "\n".join(missing)
    documented = re.findall(r"^\| `(\w+)\(", doc.split("## Redis key map", 1)[1], re.MULTILINE)
    assert sorted(documented) == sorted(row.split("`")[1].split("(")[0] for row in rows)
