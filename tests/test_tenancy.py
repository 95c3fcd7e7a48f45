"""An app key only ever reaches its own tenant's users."""

from __future__ import annotations

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.config import Settings
from middleware.errors import AuthenticationFailed
from middleware.identity import tenant_for_app_key
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import APP_KEY_A, APP_KEY_B, RunningProxy

user_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@+\-]{0,40}", fullmatch=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=user_ids)
def test_a_persona_of_tenant_b_never_reaches_tenant_a(proxy: RunningProxy, fake_upstream: FakeUpstream, user: str) -> None:
    put = httpx.put(
        f"{proxy.url}/admin/users/{user}/persona",
        json={"text": f"SECRET-OF-B-{user}"},
        headers=proxy.admin_headers("tenant-b"),
    )
    assert put.status_code == 200, put.text

    as_a = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
    raw = as_a.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "q"}], user=user
    )
    assert raw.headers["x-persona-version"] == "none"
    assert "SECRET-OF-B" not in str(fake_upstream.chat_requests[-1].body)

    as_b = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_B, max_retries=0)
    as_b.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}], user=user)
    assert f"SECRET-OF-B-{user}" in str(fake_upstream.chat_requests[-1].body)

    # The admin view is scoped by X-Persona-Tenant too.
    other = httpx.get(f"{proxy.url}/admin/users/{user}/persona", headers=proxy.admin_headers("tenant-a"))
    assert other.status_code == 404


def test_among_thousands_of_app_keys_each_finds_its_own_tenant_and_a_near_miss_none() -> None:
    """An app key is looked up by its digest, not compared against every key in turn: with 5,000
    keys configured each still names its own tenant, and a key one character off, cut short or
    with one more character is refused."""
    keys = {f"sk-app-{i:05d}-{'x' * (i % 7)}": f"tenant-{i % 50}" for i in range(5000)}
    settings_ = Settings(api_keys=keys, embedded_redis=False)
    listed = list(keys)
    for key in (listed[0], listed[2346], listed[-1]):
        assert tenant_for_app_key({"authorization": f"Bearer {key}"}, settings_) == keys[key]
        assert tenant_for_app_key({"x-api-key": key}, settings_) == keys[key]
        for near in (key[:-1], key + "x", key[:-2] + ("0" if key[-2] != "0" else "1") + key[-1]):
            assert near not in keys
            with pytest.raises(AuthenticationFailed, match="incorrect API key"):
                tenant_for_app_key({"authorization": f"Bearer {near}"}, settings_)
    assert len(settings_.app_key_tenants) == len(keys)
