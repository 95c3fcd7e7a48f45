"""LiteLLM's own proxy as a baseline, run side by side with ours in one benchmark run.

It lives in a venv of its own (`benchmarks/out/litellm-venv`, git-ignored), built on request with
the same litellm version this project pins, so its dependencies never touch the project's. It runs
with one worker and no database, routing `fake-model` to the same fake upstream our proxy uses.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import _harness as h

OUT = h.ROOT / "benchmarks" / "out"
VENV = OUT / "litellm-venv"
CONFIG = """\
model_list:
  - model_name: fake-model
    litellm_params:
      model: openai/fake-model
      api_base: {upstream}
      api_key: sk-fake-upstream
litellm_settings:
  drop_params: true
  telemetry: false
"""


def pinned_litellm() -> str:
    """The litellm requirement as pyproject.toml pins it (e.g. `litellm==1.106.2`)."""
    text = (h.ROOT / "pyproject.toml").read_text()
    found = re.search(r'"(litellm==[^"]+)"', text)
    if found is None:
        raise SystemExit("pyproject.toml pins no litellm version")
    return found.group(1)


def ensure_venv() -> Path:
    """The LiteLLM proxy's executable, installing it into its own venv the first time."""
    executable = VENV / "bin" / "litellm"
    if executable.exists():
        return executable
    OUT.mkdir(parents=True, exist_ok=True)
    requirement = pinned_litellm().replace("litellm==", "litellm[proxy]==")
    print(f"building {VENV} with {requirement} (once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", requirement], check=True)
    return executable


@contextmanager
def litellm_proxy(upstream_base: str) -> Iterator[str]:
    """LiteLLM's proxy (one worker, no database) in front of `upstream_base`; yields its base URL."""
    executable = ensure_venv()
    port = h.free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        config.write(CONFIG.format(upstream=upstream_base))
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        # no master key: LiteLLM checks no key at all (without a database it cannot check an app's)
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    args = [str(executable), "--config", config.name, "--port", str(port), "--num_workers", "1"]
    try:
        with h.process(args, env) as proc:
            h.wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=120.0)
            h.PIDS[f"http://127.0.0.1:{port}"] = proc.pid
            yield f"http://127.0.0.1:{port}"
    finally:
        Path(config.name).unlink(missing_ok=True)
