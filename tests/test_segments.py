"""Segments and the tenant default: the operator's routes, and which persona reaches the upstream
(own > segment > tenant > none) through the real proxy with the openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import APP_KEY_A, APP_KEY_B, RunningProxy, proxy_settings, start_proxy

# Unmetered: the persona reads go alone; metered: they ride with the quota check (one pipeline).
LIMITS = {"unmetered": {}, "metered": {"default": {"requests_per_minute": 10_000}}}


@pytest.fixture(params=sorted(LIMITS))
def proxy(
    request: pytest.FixtureRequest, redis_url: str, fake_upstream: FakeUpstream
) -> Iterator[RunningProxy]:
    settings = proxy_settings(
        redis_url, fake_upstream, limits=LIMITS[request.param], persona_read_timeout_s=2.0
    )
    with start_proxy(settings) as running:
        yield running


def admin(proxy: RunningProxy, method: str, path: str, tenant: str = "tenant-a", **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{proxy.url}{path}", headers=proxy.admin_headers(tenant), **kw)


def chat(
    proxy: RunningProxy, fake: FakeUpstream, user: str, *, key: str = APP_KEY_A, **extra: Any
) -> tuple[str, str, str]:
    """(x-persona-source, x-persona-version, the system text the upstream received)."""
    client = openai.OpenAI(base_url=proxy.v1, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], user=user, **extra
    )
    sent = fake.chat_requests[-1].body["messages"]
    system = " ".join(m["content"] for m in sent if m["role"] == "system")
    return raw.headers["x-persona-source"], raw.headers["x-persona-version"], system


def test_segment_crud(proxy: RunningProxy) -> None:
    assert admin(proxy, "GET", "/admin/segments").json() == []
    put = admin(proxy, "PUT", "/admin/segments/field", json={"description": "field workers"})
    assert put.status_code == 200, put.text
    assert put.json() == {"name": "field", "description": "field workers", "persona": None}
    with_persona = admin(
        proxy, "PUT", "/admin/segments/field", json={"description": "d", "persona": "Brief."}
    )
    assert with_persona.json()["persona"]["version"] == 1
    again = admin(proxy, "PUT", "/admin/segments/field", json={"description": "d", "persona": "Brief."})
    assert again.json()["persona"]["version"] == 1  # the same text is the same version
    assert admin(proxy, "PUT", "/admin/users/u1/segment", json={"segment": "field"}).status_code == 200
    got = admin(proxy, "GET", "/admin/segments/field").json()
    assert got["members"] == ["u1"] and got["persona"]["text"] == "Brief." and got["description"] == "d"
    listed = admin(proxy, "GET", "/admin/segments").json()
    assert listed == [{"name": "field", "description": "d", "members": 1, "persona_version": 1}]
    assert admin(proxy, "GET", "/admin/users/u1/segment").json() == {"user": "u1", "segment": "field"}

    assert admin(proxy, "PUT", "/admin/segments/bad:name", json={}).status_code == 400
    assert admin(proxy, "PUT", "/admin/users/u1/segment", json={"segment": "nope"}).status_code == 404
    assert admin(proxy, "GET", "/admin/segments/nope").status_code == 404

    assert admin(proxy, "DELETE", "/admin/segments/field").json() == {"segment": "field", "deleted": True}
    assert admin(proxy, "GET", "/admin/segments/field").status_code == 404
    assert admin(proxy, "GET", "/admin/users/u1/segment").status_code == 404  # members unassigned
    assert admin(proxy, "DELETE", "/admin/segments/field").status_code == 404
    versions = admin(proxy, "GET", "/admin/segments/field/persona/versions")
    assert versions.status_code == 404


def test_resolution_order_own_over_segment_over_tenant_over_none(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    assert chat(proxy, fake_upstream, "ann") == ("none", "none", "")

    assert admin(proxy, "PUT", "/admin/tenant/persona", json={"text": "TENANT-DEFAULT"}).status_code == 200
    source, version, system = chat(proxy, fake_upstream, "ann")
    assert (source, version) == ("tenant", "1") and "TENANT-DEFAULT" in system

    admin(proxy, "PUT", "/admin/segments/leaders", json={"persona": "SEG-LEADERS-1"})
    admin(proxy, "PUT", "/admin/segments/leaders", json={"persona": "SEG-LEADERS-2"})
    assert admin(proxy, "PUT", "/admin/users/ann/segment", json={"segment": "leaders"}).status_code == 200
    source, version, system = chat(proxy, fake_upstream, "ann")
    assert (source, version) == ("segment", "2") and "SEG-LEADERS-2" in system
    assert "TENANT-DEFAULT" not in system

    admin(proxy, "PUT", "/admin/users/ann/persona", json={"text": "OWN-ANN"})
    source, version, system = chat(proxy, fake_upstream, "ann")
    assert (source, version) == ("user", "1") and "OWN-ANN" in system and "SEG-LEADERS" not in system

    # Switched off in turn, each level falls through to the next.
    admin(proxy, "DELETE", "/admin/users/ann/persona")
    assert chat(proxy, fake_upstream, "ann")[:2] == ("segment", "2")
    admin(proxy, "DELETE", "/admin/segments/leaders/persona")
    assert chat(proxy, fake_upstream, "ann")[:2] == ("tenant", "1")
    admin(proxy, "DELETE", "/admin/tenant/persona")
    assert chat(proxy, fake_upstream, "ann") == ("none", "none", "")


def test_the_request_names_the_segment(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    admin(proxy, "PUT", "/admin/segments/field", json={"persona": "SEG-FIELD"})
    admin(proxy, "PUT", "/admin/segments/office", json={"persona": "SEG-OFFICE"})
    admin(proxy, "PUT", "/admin/users/bob/segment", json={"segment": "office"})

    assert "SEG-OFFICE" in chat(proxy, fake_upstream, "bob")[2]
    by_header = chat(proxy, fake_upstream, "bob", extra_headers={"X-Persona-Segment": "field"})
    assert by_header[0] == "segment" and "SEG-FIELD" in by_header[2] and "SEG-OFFICE" not in by_header[2]
    by_metadata = chat(proxy, fake_upstream, "carol", metadata={"segment": "field"})
    assert by_metadata[0] == "segment" and "SEG-FIELD" in by_metadata[2]
    # An unknown segment has no persona: nothing (no tenant default here).
    assert chat(proxy, fake_upstream, "carol", extra_headers={"X-Persona-Segment": "ghost"})[0] == "none"
    bad = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
    with pytest.raises(openai.BadRequestError):
        bad.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            user="carol",
            extra_headers={"X-Persona-Segment": "a:b"},
        )


def test_segment_versions_and_rollback(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    admin(proxy, "PUT", "/admin/segments/s", json={"persona": "FIRST"})
    admin(proxy, "PUT", "/admin/segments/s", json={"persona": "SECOND"})
    versions = admin(proxy, "GET", "/admin/segments/s/persona/versions").json()
    assert [(v["version"], v["current"]) for v in versions] == [(1, False), (2, True)]
    back = admin(proxy, "POST", "/admin/segments/s/persona/rollback", json={"version": 1})
    assert back.json()["persona"]["text"] == "FIRST"
    source, version, system = chat(proxy, fake_upstream, "dan", extra_headers={"X-Persona-Segment": "s"})
    assert (source, version) == ("segment", "1") and "FIRST" in system
    assert admin(proxy, "POST", "/admin/segments/s/persona/rollback", json={"version": 9}).status_code == 404

    admin(proxy, "PUT", "/admin/tenant/persona", json={"text": "T1"})
    admin(proxy, "PUT", "/admin/tenant/persona", json={"text": "T2"})
    assert admin(proxy, "POST", "/admin/tenant/persona/rollback", json={"version": 1}).status_code == 200
    assert admin(proxy, "GET", "/admin/tenant/persona").json()["persona"]["text"] == "T1"
    assert [v["version"] for v in admin(proxy, "GET", "/admin/tenant/persona/versions").json()] == [1, 2]


def test_segments_are_per_tenant(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    admin(proxy, "PUT", "/admin/segments/s", tenant="tenant-b", json={"persona": "SECRET-SEG-OF-B"})
    admin(proxy, "PUT", "/admin/users/eve/segment", tenant="tenant-b", json={"segment": "s"})
    admin(proxy, "PUT", "/admin/tenant/persona", tenant="tenant-b", json={"text": "SECRET-DEFAULT-OF-B"})

    extras: list[dict[str, Any]] = [{}, {"extra_headers": {"X-Persona-Segment": "s"}}]
    for extra in extras:
        source, _, system = chat(proxy, fake_upstream, "eve", **extra)
        assert source == "none" and "SECRET" not in system
    assert admin(proxy, "GET", "/admin/segments").json() == []
    assert admin(proxy, "GET", "/admin/segments/s").status_code == 404
    assert admin(proxy, "GET", "/admin/users/eve/segment").status_code == 404
    assert admin(proxy, "GET", "/admin/tenant/persona").status_code == 404

    assert "SECRET-SEG-OF-B" in chat(proxy, fake_upstream, "eve", key=APP_KEY_B)[2]


def test_forget_and_export_cover_the_assignment(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    admin(proxy, "PUT", "/admin/segments/s", json={"persona": "SEG"})
    admin(proxy, "PUT", "/admin/users/fay/segment", json={"segment": "s"})
    assert admin(proxy, "GET", "/admin/users/fay/export").json()["segment"] == "s"
    assert admin(proxy, "DELETE", "/admin/users/fay").status_code == 200
    assert admin(proxy, "GET", "/admin/users/fay/segment").status_code == 404
    assert admin(proxy, "GET", "/admin/segments/s").json()["members"] == []
    assert chat(proxy, fake_upstream, "fay")[0] == "none"


def test_a_segment_exports_its_members_and_every_persona_version(proxy: RunningProxy) -> None:
    admin(proxy, "PUT", "/admin/segments/field", json={"description": "d", "persona": "Brief."})
    admin(proxy, "PUT", "/admin/segments/field", json={"description": "d", "persona": "Briefer."})
    for user in ("u2", "u1"):
        admin(proxy, "PUT", f"/admin/users/{user}/segment", json={"segment": "field"})
    admin(proxy, "POST", "/admin/segments/field/persona/rollback", json={"version": 1})
    exported = admin(proxy, "GET", "/admin/segments/field/export").json()
    assert exported["members"] == ["u1", "u2"] and exported["current_version"] == 1
    assert [(v["version"], v["text"]) for v in exported["versions"]] == [(1, "Brief."), (2, "Briefer.")]
    assert exported["versions"][0]["provenance"] == {"source": "admin"}
    assert admin(proxy, "GET", "/admin/segments/field/export", tenant="tenant-b").status_code == 404
    assert admin(proxy, "GET", "/admin/segments/nope/export").status_code == 404


def test_responses_and_messages_resolve_the_same_way(redis_url: str, fake_upstream: FakeUpstream) -> None:
    settings = proxy_settings(
        redis_url, fake_upstream, anthropic_api_base=fake_upstream.root_url, persona_read_timeout_s=2.0
    )
    with start_proxy(settings) as proxy:
        admin(proxy, "PUT", "/admin/segments/s", json={"persona": "SEG-FOR-APIS"})
        admin(proxy, "PUT", "/admin/tenant/persona", json={"text": "DEFAULT-FOR-APIS"})
        openai_sdk = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
        raw = openai_sdk.responses.with_raw_response.create(
            model="m", input="hi", user="gus", extra_headers={"X-Persona-Segment": "s"}
        )
        sent = [r for r in fake_upstream.requests if r.path.endswith("/responses")][-1].body
        assert raw.headers["x-persona-source"] == "segment" and "SEG-FOR-APIS" in sent["instructions"]

        anthropic_sdk = anthropic.Anthropic(base_url=proxy.url, api_key=APP_KEY_A, max_retries=0)
        raw_message = anthropic_sdk.messages.with_raw_response.create(
            model="claude-fake",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            metadata={"user_id": "gus"},
        )
        sent = [r for r in fake_upstream.requests if r.path.endswith("/messages")][-1].body
        assert raw_message.headers["x-persona-source"] == "tenant"
        assert raw_message.headers["x-persona-version"] == "1"
        assert "DEFAULT-FOR-APIS" in str(sent["system"])


def test_scripts_flushed_from_redis_are_loaded_again(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    """A Redis restart or SCRIPT FLUSH drops the resolution script: the next call loads it again and
    still resolves (no call goes without its persona)."""
    import redis

    admin(proxy, "PUT", "/admin/segments/s", json={"persona": "SEG-AFTER-FLUSH"})
    admin(proxy, "PUT", "/admin/users/hal/segment", json={"segment": "s"})
    assert chat(proxy, fake_upstream, "hal")[0] == "segment"
    client = redis.Redis.from_url(proxy.settings.redis_url)
    try:
        client.script_flush()
    finally:
        client.close()
    source, version, system = chat(proxy, fake_upstream, "hal")
    assert (source, version) == ("segment", "1") and "SEG-AFTER-FLUSH" in system
