"""The API documentation pages, served with their assets from this process (no CDN, no fonts).

`/docs` (Swagger UI), `/redoc` and `/openapi.json` exist in development only: with
`PERSONA_ENVIRONMENT=production` none of them is routed. The scripts and styles ship in the
`fastapi-offline` package and are served under `/docs/static/`.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

from middleware.config import Settings

STATIC = "/docs/static"
_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"


def openapi_url(settings: Settings) -> str | None:
    """Where the OpenAPI schema is served: nowhere in production."""
    return None if settings.environment == "production" else "/openapi.json"


def install_docs(app: FastAPI, settings: Settings) -> None:
    if settings.environment == "production" or app.openapi_url is None:
        return
    schema_url = app.openapi_url
    app.mount(STATIC, StaticFiles(directory=_ASSETS), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=schema_url,
            title=f"{app.title} - API",
            swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=schema_url,
            title=f"{app.title} - API",
            redoc_js_url=f"{STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC}/favicon.png",
            with_google_fonts=False,
        )
