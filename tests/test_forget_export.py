"""Forget deletes every trace of a user (SCAN finds nothing); export returns everything stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from middleware.store import keys
from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import drain, job_settings, store_services
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import RunningProxy

T, U = "tenant-a", "alice"
ROOT = Path(__file__).resolve().parent.parent


async def populate(proxy: RunningProxy, r: aioredis.Redis, tenant: str, user: str) -> str:
    """Pairs, two persona versions (one induced by a job), an adapter, a comparison, a session."""
    async with store_services(proxy.settings) as services:
        await services.preferences.add_pairs(tenant, user, make_pairs(user, 5, rationale="why"))
        await services.personas.save(tenant, user, f"persona of {user}", [], {"source": "admin"})
    with httpx.Client(base_url=proxy.url, headers=proxy.admin_headers(tenant)) as http:
        job_id: str = http.post(f"/admin/users/{user}/persona/refresh").json()["job_id"]
    await drain(proxy.settings)
    await r.set(keys.adapter(tenant, user, 2), b"\x00" * 64)
    await r.set(keys.comparison(tenant, user, f"cmp-{user}"), b'{"candidates": []}', ex=600)
    await r.set(keys.comparison_owner(f"cmp-{user}"), f"{tenant}:{user}", ex=600)
    await r.set(keys.session(tenant, user, "s1"), b'[{"role": "user", "content": "hi"}]')
    # an already-judged comparison leaves only its marker and its owner entry
    await r.set(keys.comparison_judged(tenant, user, f"judged-{user}"), b"1", ex=600)
    await r.set(keys.comparison_owner(f"judged-{user}"), f"{tenant}:{user}", ex=600)
    return job_id


async def all_keys(r: aioredis.Redis) -> list[str]:
    return sorted([k.decode() async for k in r.scan_iter(match="*", count=1000)])


async def test_forget_deletes_every_key_of_the_user(
    jproxy: RunningProxy, fake_upstream: FakeUpstream, redis_url: str
) -> None:
    fake_upstream.responder = InductionResponder()
    r = aioredis.Redis.from_url(redis_url)
    job_id = await populate(jproxy, r, T, U)
    await populate(jproxy, r, T, "bob")
    await populate(jproxy, r, "tenant-b", U)  # same user id, another tenant
    before = await all_keys(r)
    assert any(job_id in k for k in before) and any(U in k for k in before)

    with httpx.Client(base_url=jproxy.url, headers=jproxy.admin_headers(T)) as http:
        response = http.delete(f"/admin/users/{U}")
        assert response.status_code == 200
        assert response.json()["deleted_keys"] >= 8 and response.json()["deleted_jobs"] == 1
        assert http.get(f"/admin/jobs/{job_id}").status_code == 404
        assert http.get(f"/admin/users/{U}/persona").status_code == 404
        assert http.get("/admin/users/bob/persona").status_code == 200
        exported = http.get(f"/admin/users/{U}/export").json()

    after = await all_keys(r)
    tag = keys.user_tag(T, U)
    assert [k for k in after if tag in k or job_id in k or (k.endswith(f"cmp-{U}") and T in k)] == []
    owners = [k for k in after if "comparison-owner" in k]
    for gone in (f"cmp-{U}", f"judged-{U}"):
        assert keys.comparison_owner(gone) not in owners
    assert not await r.sismember(keys.tenant_users(T), U)
    assert await r.sismember(keys.tenant_users(T), "bob")
    assert await r.sismember(keys.tenant_users("tenant-b"), U)
    # Nothing left that names tenant-a's alice, in keys or in values of shared keys.
    for key in after:
        kind = (await r.type(key)).decode()
        if kind == "string":
            assert f"{T}:{U}" not in (await r.get(key) or b"").decode(errors="replace")
    # Everyone else's keys are untouched.
    assert [
        k
        for k in before
        if k not in after
        and tag not in k
        and job_id not in k
        and not k.endswith(("cmp-alice", "judged-alice"))
    ] == []
    assert exported["persona"] is None and exported["preferences"] == [] and exported["keys"] == []
    await r.aclose()


async def test_export_returns_everything(
    jproxy: RunningProxy, fake_upstream: FakeUpstream, redis_url: str
) -> None:
    fake_upstream.responder = InductionResponder()
    r = aioredis.Redis.from_url(redis_url)
    job_id = await populate(jproxy, r, T, U)
    with httpx.Client(base_url=jproxy.url, headers=jproxy.admin_headers(T)) as http:
        data = http.get(f"/admin/users/{U}/export").json()
        other_tenant = http.get(f"/admin/users/{U}/export", headers=jproxy.admin_headers("tenant-b")).json()
    assert data["user"] == U and data["tenant"] == T and data["known_in_tenant"] is True
    assert data["persona"]["version"] == 2 and data["persona"]["provenance"]["job_id"] == job_id
    assert [v["version"] for v in data["persona_versions"]] == [1, 2]
    assert data["persona_versions"][0]["text"] == f"persona of {U}"
    assert len(data["preferences"]) == 5 and data["preferences"][0]["data"]["rationale"] == "why"
    assert data["adapters"] == [
        {"key": keys.adapter(T, U, 2), "name": "adapter:v2", "type": "string", "bytes": 64, "ttl_s": -1}
    ]
    assert data["comparisons"] == {f"cmp-{U}": {"candidates": []}, f"judged-{U}:judged": 1}
    assert data["sessions"] == {"s1": [{"role": "user", "content": "hi"}]}
    assert [j["id"] for j in data["jobs"]] == [job_id] and data["jobs"][0]["state"] == "complete"
    assert set(data["keys"]) == {k async for k in _decoded(r.scan_iter(match=keys.user_pattern(T, U)))}
    assert other_tenant["persona"] is None and other_tenant["preferences"] == []
    await r.aclose()


async def _decoded(it: object) -> AsyncIterator[str]:
    async for k in it:  # type: ignore[attr-defined]
        yield k.decode()


async def test_cli_export_and_forget(redis_url: str, fake_upstream: FakeUpstream) -> None:
    settings = job_settings(redis_url, fake_upstream)
    async with store_services(settings) as services:
        await services.preferences.add_pairs(T, U, make_pairs(U, 3))
        await services.personas.save(T, U, "cli persona", [], {})
    env = {**os.environ, "PERSONA_REDIS_URL": redis_url}

    def cli(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "middleware", *args, "--tenant", T],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    exported = cli("export", U)
    assert exported["persona"]["text"] == "cli persona" and len(exported["preferences"]) == 3
    forgotten = cli("forget", U)
    assert forgotten["deleted_keys"] >= 4
    r = aioredis.Redis.from_url(redis_url)
    assert [k async for k in r.scan_iter(match=keys.user_pattern(T, U))] == []
    await r.aclose()
