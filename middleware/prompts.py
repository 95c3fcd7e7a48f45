"""Load the jinja2 templates in `prompts/` (shipped inside the wheel as `middleware/_prompts`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

_PACKAGE_DIR = Path(__file__).resolve().parent


def prompts_dir() -> Path:
    for candidate in (_PACKAGE_DIR / "_prompts", _PACKAGE_DIR.parent / "prompts"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("prompt templates not found (expected prompts/ beside the package)")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(prompts_dir()),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
    )


def render(name: str, **values: object) -> str:
    """Render `prompts/<name>` with the given values."""
    return environment().get_template(name).render(**values).strip()
