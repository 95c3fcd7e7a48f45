"""Helpers for the drop-in API tests: a persona for a user (any id, URL-encoded in the admin path)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from tests.support.proxy import RunningProxy

PERSONA_MARK = "PERSONA-MARK-7f3a"
PERSONA_TEXT = f"Prefers short, concrete answers. {PERSONA_MARK}"


def user_url(proxy: RunningProxy, user: str, rest: str = "") -> str:
    return f"{proxy.url}/admin/users/{quote(user, safe='')}{rest}"


def give_persona(proxy: RunningProxy, user: str, tenant: str = "tenant-a", text: str = PERSONA_TEXT) -> dict[str, Any]:
    response = httpx.put(
        user_url(proxy, user, "/persona"),
        json={"text": text, "exemplars": []},
        headers=proxy.admin_headers(tenant),
    )
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found
