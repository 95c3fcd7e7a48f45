"""Admin persona routes: versions, byte-for-byte rollback, and tenant isolation of admin routes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis

from middleware.store import keys
from tests.support.proxy import APP_KEY_A, RunningProxy
from tests.support.proxy import admin_client as admin

U = "alice"
TRICKY = 'Prefers métrique units 🌍,\n\ttabs\tand "quotes" \\ backslashes  '


def test_rollback_restores_a_version_byte_for_byte(proxy: RunningProxy, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    exemplar = {
        "context": [{"role": "user", "content": "Q"}],
        "chosen": {"role": "assistant", "content": "short"},
        "rejected": {"role": "assistant", "content": "long"},
    }
    with admin(proxy) as http:
        v1 = http.put(f"/admin/users/{U}/persona", json={"text": TRICKY, "exemplars": [exemplar]}).json()
        stored_v1 = r.get(keys.persona_version("tenant-a", U, 1))
        v2 = http.put(f"/admin/users/{U}/persona", json={"text": "second"}).json()
        assert (v1["version"], v2["version"]) == (1, 2)
        versions = http.get(f"/admin/users/{U}/persona/versions").json()
        assert [(v["version"], v["current"]) for v in versions] == [(1, False), (2, True)]
        back = http.post(f"/admin/users/{U}/persona/rollback", json={"version": 1})
        assert back.status_code == 200
        assert r.get(keys.persona_current("tenant-a", U)) == stored_v1
        current = http.get(f"/admin/users/{U}/persona").json()
        assert current["text"] == TRICKY and current["version_id"] == v1["version_id"]
        assert current["exemplars"][0]["chosen"]["content"] == "short"
        assert [v["current"] for v in http.get(f"/admin/users/{U}/persona/versions").json()] == [True, False]
        missing = http.post(f"/admin/users/{U}/persona/rollback", json={"version": 9})
        assert missing.status_code == 404
    r.close()


ADMIN_ROUTES = [
    ("GET", "/admin/users/{u}/persona", None),
    ("GET", "/admin/users/{u}/persona/versions", None),
    ("POST", "/admin/users/{u}/persona/rollback", {"version": 1}),
    ("DELETE", "/admin/users/{u}/persona", None),
    ("GET", "/admin/users/{u}/export", None),
]


@pytest.mark.parametrize("user", ["alice", "bob.smith", "u:1@x"])
def test_admin_routes_are_tenant_scoped(proxy: RunningProxy, user: str) -> None:
    with admin(proxy, "tenant-a") as a, admin(proxy, "tenant-b") as b:
        assert a.put(f"/admin/users/{user}/persona", json={"text": "secret persona"}).status_code == 200
        for method, path, body in ADMIN_ROUTES[:4]:
            response = b.request(method, path.format(u=user), json=body)
            if path.endswith("/versions"):
                assert response.json() == []
            else:
                assert response.status_code == 404, (method, path)
        exported = b.get(f"/admin/users/{user}/export").json()
        assert exported["persona"] is None and exported["persona_versions"] == []
        assert "secret persona" not in str(exported)
        # Forgetting the user in tenant B leaves tenant A's user alone.
        assert b.delete(f"/admin/users/{user}").status_code == 200
        assert a.get(f"/admin/users/{user}/persona").json()["text"] == "secret persona"


def test_jobs_are_tenant_scoped_and_admin_only(proxy: RunningProxy) -> None:
    from middleware.models import Message, PreferencePair

    pairs = [
        PreferencePair(
            user_id=U,
            context=[Message(role="user", content=f"Q{i}")],
            chosen=Message(role="assistant", content="a"),
            rejected=Message(role="assistant", content="b"),
        )
        for i in range(5)
    ]
    _add(proxy, pairs)
    with admin(proxy, "tenant-a") as a, admin(proxy, "tenant-b") as b:
        job_id = a.post(f"/admin/users/{U}/persona/refresh").json()["job_id"]
        assert a.get(f"/admin/jobs/{job_id}").status_code == 200
        assert b.get(f"/admin/jobs/{job_id}").status_code == 404
        assert b.post(f"/admin/jobs/{job_id}/cancel").status_code == 404
        assert a.get(f"/admin/jobs/{job_id}").json()["state"] == "queued"
        # Tenant B has no pairs for this user id: nothing to refresh.
        assert b.post(f"/admin/users/{U}/persona/refresh").json()["error"]["code"] == "not_enough_data"
    app_headers = {"Authorization": f"Bearer {APP_KEY_A}", "X-Persona-Tenant": "tenant-a"}
    with httpx.Client(base_url=proxy.url, headers=app_headers) as app:
        for method, path in [
            ("GET", f"/admin/jobs/{job_id}"),
            ("POST", f"/admin/users/{U}/persona/refresh"),
            ("DELETE", f"/admin/users/{U}"),
            ("GET", f"/admin/users/{U}/export"),
        ]:
            assert app.request(method, path).status_code == 403, path
    with httpx.Client(base_url=proxy.url) as anonymous:
        assert anonymous.get(f"/admin/users/{U}/export").status_code == 401


def _add(proxy: RunningProxy, pairs: list[Any]) -> None:
    import asyncio

    from tests.jobs_support import store_services

    async def run() -> None:
        async with store_services(proxy.settings) as services:
            await services.preferences.add_pairs("tenant-a", U, pairs)

    asyncio.run(run())
