"""No redirect is built from the Host header; the docs pages load nothing from outside and are off in production."""

from __future__ import annotations

import re

import httpx

from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import ADMIN_KEY, APP_KEY_A, RunningProxy, proxy_settings, start_proxy

_URL_ATTR = re.compile(r"""(?:src|href|url|spec-url)\s*[=:(]\s*['"]?([^'"\s)>]+)""", re.IGNORECASE)


def test_a_trailing_slash_is_a_404_never_a_redirect(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    headers = {"Host": "attacker.example", "Authorization": f"Bearer {APP_KEY_A}"}
    paths = [p for p in proxy.server.app.openapi()["paths"] if "{" not in p] + ["/admin/users/u1/persona"]
    with httpx.Client(base_url=proxy.url, follow_redirects=False, timeout=10) as client:
        chat = client.post("/v1/chat/completions/", headers=headers, json={"model": "m", "messages": []})
        assert chat.status_code == 404 and "location" not in chat.headers
        assert chat.json()["error"]["code"] == "not_found"
        for path in paths:
            for method in ("GET", "POST"):
                response = client.request(method, path + "/", headers=headers)
                assert not response.is_redirect, (method, path, response.headers.get("location"))
                assert "attacker.example" not in response.text
    assert fake_upstream.chat_requests == []


def _external(html: str) -> list[str]:
    return [u for u in _URL_ATTR.findall(html) if not u.startswith("/") or u.startswith("//")]


def test_docs_pages_load_their_assets_from_this_server(proxy: RunningProxy) -> None:
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        for page in ("/docs", "/redoc"):
            response = client.get(page)
            assert response.status_code == 200 and "text/html" in response.headers["content-type"]
            html = response.text
            assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE), html
            assert _external(html) == []
            assets = [u for u in _URL_ATTR.findall(html) if u.startswith("/docs/static/")]
            assert assets, html
            for asset in assets:
                assert client.get(asset).status_code == 200, asset
        assert "validatorUrl" in client.get("/docs").text  # no badge fetched from an online validator
        assert client.get("/openapi.json").json()["paths"]


def test_production_serves_no_docs_and_no_schema(redis_url: str, fake_upstream: FakeUpstream) -> None:
    settings = proxy_settings(redis_url, fake_upstream, environment="production")
    with start_proxy(settings) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/static/swagger-ui-bundle.js", "/docs/oauth2-redirect"):
            for key in (APP_KEY_A, ADMIN_KEY):
                response = client.get(path, headers={"Authorization": f"Bearer {key}"})
                assert response.status_code == 404, path
        assert client.get("/healthz").status_code == 200
