"""The evaluation page (/ui/evaluate): blind own / other / baseline trials for one user of a run.

GET /ui/evaluate                 the page (`?evaluation=<id>` pre-fills the run id)
GET /ui/evaluate/static/<file>   its script and stylesheet (a fixed list)

The page only calls the app-facing JSON API (/v1/evaluations/...): it never receives which answer
came from which condition, so it cannot show it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, Response

from middleware.api.ui import page_response, static_response
from middleware.ui import render_page

router = APIRouter(prefix="/ui/evaluate", tags=["ui"], include_in_schema=False)
STATIC_FILES = {"evaluate.js": "text/javascript; charset=utf-8", "evaluate.css": "text/css; charset=utf-8"}


@router.get("")
async def page() -> HTMLResponse:
    html = render_page("evaluate.html", static_prefix="/ui/static", own_static_prefix="/ui/evaluate/static")
    return page_response(html)


@router.get("/static/{name}")
async def static(name: Annotated[str, Path(max_length=64)]) -> Response:
    return static_response(STATIC_FILES, name)
