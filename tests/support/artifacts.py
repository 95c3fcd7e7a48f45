"""Where tests leave files for people to look at (screenshots, report charts); git-ignored."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def artifacts_dir(name: str) -> Path:
    """``$PERSONA_TEST_ARTIFACTS/<name>`` (default ``test-artifacts/<name>``), created if missing."""
    root = Path(os.environ.get("PERSONA_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path
