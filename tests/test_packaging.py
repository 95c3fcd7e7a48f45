"""What the Dockerfile does (`pip install ./sdk .`, then `persona serve`) works from built wheels, and
the SDK's own distribution installs and imports without the server's dependencies."""

from __future__ import annotations

import json
import os
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
    assert not any(n.startswith("middleware/sdk/") for n in names)  # shipped by persona-middleware-sdk

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


def _pins(requirements: list[str]) -> dict[str, str]:
    return {name.split("[")[0]: version for name, _, version in (r.partition("==") for r in requirements)}


def test_the_server_depends_on_its_sdk_at_the_same_pins() -> None:
    import tomllib

    from middleware import __version__

    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    sdk = tomllib.loads((ROOT / "sdk" / "pyproject.toml").read_text())["project"]["dependencies"]
    server_pins, sdk_pins = _pins(server), _pins(sdk)
    assert server_pins["persona-middleware-sdk"] == __version__
    assert set(sdk_pins) == {"openai", "httpx", "pydantic"}
    assert {name: server_pins[name] for name in sdk_pins} == sdk_pins


def test_the_sdk_installs_and_imports_without_the_server_dependencies(tmp_path: Path) -> None:
    """A fresh venv (no system site-packages) with only the SDK distribution and its requirements."""
    import venv

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
         str(tmp_path / "dist"), str(ROOT / "sdk")],
        check=True,
    )
    wheel = next((tmp_path / "dist").glob("persona_middleware_sdk-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert {n.split("/")[0] for n in archive.namelist()} == {"middleware", wheel.name.split("-py3")[0] + ".dist-info"}
        assert "middleware/__init__.py" not in archive.namelist()  # the server distribution's
    env_dir = tmp_path / "client-venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # This test's pip installs into the new venv (pip's cache and the package index serve the wheels).
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check",
         str(wheel)],
        check=True,
    )
    code = """
import importlib.util, json, sys
from middleware.sdk import PersonalizedOpenAI
client = PersonalizedOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-app", user="alice")
heavy = ("fastapi", "litellm", "torch", "matplotlib", "redis", "uvicorn")
print(json.dumps({
    "user_header": client.default_headers.get("X-Persona-User"),
    "loaded": [m for m in heavy if m in sys.modules],
    "installed": [m for m in heavy if importlib.util.find_spec(m) is not None],
    "sdk": sys.modules["middleware.sdk"].__file__,
}))
"""
    env = {"PATH": os.environ.get("PATH", ""), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["user_header"] == "alice"
    assert result["loaded"] == [] and result["installed"] == []
    assert result["sdk"].startswith(str(env_dir))
