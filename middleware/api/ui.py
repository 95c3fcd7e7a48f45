"""The collection page (/ui): server-rendered with jinja2; the page's small JS calls the JSON API.

GET /ui                 the page
GET /ui/static/<file>   its script and stylesheet (a fixed list)
GET /ui/profile         the signed-in user's persona and how many judgements they have
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from middleware.api.deps import AppTenant, ServicesDep, caller_user
from middleware.api.responses import JSONBytes
from middleware.errors import NotFound
from middleware.ui import STATIC_DIR, STATIC_FILES, render_page

router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def page_response(html: str) -> HTMLResponse:
    """A UI page: strict CSP, never cached."""
    return HTMLResponse(html, headers=PAGE_HEADERS)


def static_response(files: Mapping[str, str], name: str) -> Response:
    """One of a page's static files (``files`` maps the allowed names to their media types)."""
    media_type = files.get(name)
    if media_type is None:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(
        STATIC_DIR / name, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"}
    )


@router.get("")
@router.get("/")
async def page(services: ServicesDep) -> HTMLResponse:
    settings = services.settings
    models = settings.public_models()
    html = render_page(
        "collect.html",
        static_prefix="/ui/static",
        default_model=models[0] if models else settings.induction_model,
        models=models,
    )
    return page_response(html)


@router.get("/static/{name}")
async def static(name: Annotated[str, Path(max_length=64)]) -> Response:
    return static_response(STATIC_FILES, name)


@router.get("/profile")
async def profile(request: Request, tenant: AppTenant, services: ServicesDep) -> Response:
    user = caller_user(request, None, required=True)
    assert user is not None
    persona = await services.personas.get(tenant, user)
    store = services.comparisons.store
    return JSONBytes(
        {
            "user": user,
            "persona": {"text": persona.text, "version": persona.version} if persona else None,
            "judgements": await store.judgement_count(tenant, user),
            "records": await services.preferences.count(tenant, user),
        }
    )
