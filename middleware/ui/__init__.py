"""The collection page's jinja2 templates and static files (pages, not prompts: prompts live in prompts/)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

UI_DIR = Path(__file__).resolve().parent
STATIC_DIR = UI_DIR / "static"
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(UI_DIR / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def render_page(name: str, **values: object) -> str:
    return environment().get_template(name).render(**values)
