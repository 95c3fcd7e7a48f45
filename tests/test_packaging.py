"""What the Dockerfile does (`pip install .`, then `persona serve`) works from a built wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_prompts_and_the_command(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    wheel = next(tmp_path.glob("persona_middleware-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        declared = archive.read(entry_points).decode()
    prompts = {Path(n).name for n in names if n.startswith("middleware/_prompts/")}
    shipped = {p.name for p in (ROOT / "prompts").glob("*.j2")}
    assert shipped and shipped <= prompts
    assert "persona = middleware.cli:main" in declared
    assert "[middleware.rerankers]" in declared

    # Run from the unpacked wheel (not the source tree): templates resolve inside the package.
    code = "from middleware.prompts import prompts_dir; print(prompts_dir())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")},
        capture_output=True, text=True, check=True,
    ).stdout
    assert out.strip() == str(tmp_path / "site" / "middleware" / "_prompts")
    help_text = subprocess.run(
        [sys.executable, "-m", "middleware", "serve", "--help"], cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        capture_output=True, text=True, check=True,
    ).stdout
    assert "--port" in help_text
