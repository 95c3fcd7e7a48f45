"""scripts/check_site_packages.sh: the supply-chain checks CI runs on a venv before any of its
interpreters starts (so it reads site-packages as files, and never runs the venv's python)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fake_venv(tmp_path: Path, *names: str) -> Path:
    """A venv-shaped folder whose python would record that it ran."""
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (venv / "bin").mkdir()
    marker = tmp_path / "python-ran"
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\ntouch {marker}\n")
    python.chmod(0o755)
    for name in names:
        path = site / name
        if name.endswith(".dist-info"):
            path.mkdir()
        else:
            path.write_text("import os\n")
    return venv


def check(venv: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "check_site_packages.sh"), str(venv)],
        capture_output=True, text=True, timeout=30,
    )


def test_allow_listed_pth_files_and_a_good_litellm_pass(tmp_path: Path) -> None:
    venv = fake_venv(
        tmp_path, "distutils-precedence.pth", "_editable_impl_persona_middleware.pth", "litellm-1.106.2.dist-info"
    )
    result = check(venv)
    assert result.returncode == 0, result.stderr
    assert "passed (litellm 1.106.2)" in result.stderr
    assert not (tmp_path / "python-ran").exists()


def test_an_unexpected_pth_file_fails_without_running_the_venv(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, "distutils-precedence.pth", "sneaky.pth")
    result = check(venv)
    assert result.returncode == 1
    assert "UNEXPECTED .pth file in site-packages: " in result.stderr and "sneaky.pth" in result.stderr
    assert not (tmp_path / "python-ran").exists()


def test_a_forbidden_litellm_release_fails(tmp_path: Path) -> None:
    for bad in ("1.82.7", "1.82.8"):
        result = check(fake_venv(tmp_path / bad, f"litellm-{bad}.dist-info"))
        assert result.returncode == 1
        assert f"FORBIDDEN litellm {bad} is installed" in result.stderr
