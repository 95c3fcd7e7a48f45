"""End-user tokens: minted by the app key, bound to one tenant and user, refused elsewhere."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import httpx
import jwt
import openai
import pytest

from middleware.config import Settings
from middleware.errors import AuthenticationFailed
from middleware.user_tokens import UserTokens
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import ADMIN_KEY, APP_KEY_A, APP_KEY_B, RunningProxy, proxy_settings, start_proxy

KEY_NEW = "new-signing-key-0123456789abcdefghijklmnop"
KEY_OLD = "old-signing-key-0123456789abcdefghijklmnop"
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def tproxy(redis_url: str, fake_upstream: FakeUpstream) -> Iterator[RunningProxy]:
    settings = proxy_settings(redis_url, fake_upstream, user_token_keys={"k2": KEY_NEW, "k1": KEY_OLD})
    with start_proxy(settings) as running:
        yield running


def mint(proxy: RunningProxy, user: str = "alice", ttl_s: int = 600, key: str = APP_KEY_A) -> httpx.Response:
    return httpx.post(
        f"{proxy.v1}/user-tokens", headers={"Authorization": f"Bearer {key}"},
        json={"user": user, "ttl_s": ttl_s}, timeout=10,
    )


def token_for(proxy: RunningProxy, user: str = "alice", key: str = APP_KEY_A) -> str:
    minted = mint(proxy, user, key=key)
    assert minted.status_code == 201, minted.text
    token: str = minted.json()["token"]
    return token


def as_user(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_mint_needs_the_app_key_and_a_ttl_in_range(tproxy: RunningProxy) -> None:
    before = int(time.time())
    minted = mint(tproxy, ttl_s=120)
    assert minted.status_code == 201
    body = minted.json()
    assert before + 120 <= body["expires_at"] <= int(time.time()) + 120
    claims = jwt.decode(body["token"], KEY_NEW, algorithms=["HS256"], audience="persona-end-user")
    assert (claims["sub"], claims["ten"]) == ("alice", "tenant-a")
    assert jwt.get_unverified_header(body["token"])["kid"] == "k2"  # the first key signs
    for ttl in (59, 86_401):
        assert mint(tproxy, ttl_s=ttl).status_code == 422
    assert mint(tproxy, user="bad\x01user").status_code == 400
    assert mint(tproxy, key="sk-wrong").status_code == 401
    # a user token cannot mint tokens (for itself or anyone else)
    refused = httpx.post(f"{tproxy.v1}/user-tokens", headers=as_user(body["token"]), json={"user": "bob"})
    assert error(refused, 403)["code"] == "user_token_not_allowed"


def test_a_user_token_acts_for_its_user_on_the_end_user_routes(tproxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    token = token_for(tproxy)
    client = httpx.Client(base_url=tproxy.url, headers=as_user(token), timeout=10)
    created = client.post("/v1/comparisons", json={"model": "fake-model", "messages": MESSAGES})
    assert created.status_code == 200, created.text
    assert created.json()["user"] == "alice"  # from the token
    judged = client.post(f"/v1/comparisons/{created.json()['id']}/judgement", json={"best": 0, "worst": 1})
    assert judged.status_code == 201 and judged.json()["user"] == "alice"
    profile = client.get("/ui/profile")
    assert profile.status_code == 200 and profile.json()["user"] == "alice" and profile.json()["judgements"] == 1
    added = client.post("/v1/preferences", json={"context": MESSAGES, "chosen": {"role": "assistant", "content": "a"}, "rejected": {"role": "assistant", "content": "b"}})
    assert added.status_code == 201, added.text
    assert added.json()["data"][0]["user"] == "alice"
    # the chat routes: the SDK with the token as its key; the persona lookup uses the token's user
    sdk = openai.OpenAI(base_url=tproxy.v1, api_key=token, max_retries=0)
    sdk.chat.completions.create(model="fake-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert sdk.models.with_raw_response.list().http_response.status_code == 200  # 401 would raise
    assert fake_upstream.chat_requests[-1].headers["authorization"] == "Bearer sk-upstream-secret"


def test_naming_another_user_is_a_403(tproxy: RunningProxy) -> None:
    token = token_for(tproxy)
    client = httpx.Client(base_url=tproxy.url, headers=as_user(token), timeout=10)
    attempts = [
        client.post("/v1/comparisons", json={"model": "fake-model", "messages": MESSAGES, "user": "bob"}),
        client.post("/v1/comparisons", json={"model": "fake-model", "messages": MESSAGES},
                    headers={"X-Persona-User": "bob"}),
        client.get("/ui/profile", headers={"X-Persona-User": "bob"}),
        client.get("/v1/sessions/s1", params={"user": "bob"}),
        client.post("/v1/preferences", json={"user": "bob", "context": MESSAGES, "chosen": {"role": "assistant", "content": "a"}, "rejected": {"role": "assistant", "content": "b"}}),
        client.post("/v1/chat/completions", json={"model": "fake-model", "messages": MESSAGES, "user": "bob"}),
        client.post("/v1/chat/completions", json={"model": "fake-model", "messages": MESSAGES},
                    headers={"X-Persona-User": "bob"}),
    ]
    for response in attempts:
        assert error(response, 403)["code"] == "user_token_mismatch"
    # naming yourself is fine
    assert client.get("/v1/sessions/s1", params={"user": "alice"}).status_code == 200


def test_another_users_comparison_is_not_found(tproxy: RunningProxy) -> None:
    bobs = httpx.post(
        f"{tproxy.v1}/comparisons", headers=as_user(token_for(tproxy, "bob")),
        json={"model": "fake-model", "messages": MESSAGES}, timeout=10,
    )
    assert bobs.status_code == 200
    judged = httpx.post(
        f"{tproxy.v1}/comparisons/{bobs.json()['id']}/judgement", headers=as_user(token_for(tproxy)),
        json={"best": 0, "worst": 1}, timeout=10,
    )
    assert error(judged, 404)["code"] == "not_found"


def test_admin_routes_refuse_user_tokens(redis_url: str, fake_upstream: FakeUpstream, tproxy: RunningProxy) -> None:
    token = token_for(tproxy)
    for method, path in (("GET", "/admin/users/alice/persona"), ("GET", "/admin/users/alice/export"),
                         ("GET", "/admin/evaluations")):
        response = httpx.request(method, f"{tproxy.url}{path}", headers=as_user(token, **{"X-Persona-Tenant": "tenant-a"}))
        assert error(response, 403)["code"] == "user_token_not_allowed"
    # also in development, where admin routes are open to callers without a key
    settings = proxy_settings(redis_url, fake_upstream, admin_key="", api_keys={}, user_token_keys=[KEY_NEW])
    with start_proxy(settings) as dev:
        dev_token = token_for(dev)
        response = httpx.get(f"{dev.url}/admin/users/alice/persona", headers=as_user(dev_token))
        assert error(response, 403)["code"] == "user_token_not_allowed"
        assert httpx.get(f"{dev.url}/ui/profile", headers=as_user(dev_token)).json()["user"] == "alice"


def test_tampered_expired_and_foreign_tokens_are_401(tproxy: RunningProxy) -> None:
    token = token_for(tproxy)
    header, payload, signature = token.split(".")
    forged_claims = jwt.decode(token, options={"verify_signature": False}) | {"sub": "bob"}
    forged_payload = jwt.encode(forged_claims, "x" * 40, algorithm="HS256").split(".")[1]
    expired = jwt.encode(
        {"iss": "persona-middleware", "aud": "persona-end-user", "sub": "alice", "ten": "tenant-a",
         "iat": int(time.time()) - 700, "exp": int(time.time()) - 100},
        KEY_NEW, algorithm="HS256", headers={"kid": "k2"},
    )
    unsigned = jwt.encode(forged_claims, cast(Any, None), algorithm="none")
    cases = {
        f"{header}.{forged_payload}.{signature}": "invalid_user_token",
        f"{header}.{payload}.{signature[:-2]}AA": "invalid_user_token",
        jwt.encode(forged_claims, "attacker-key-0123456789abcdefghijkl", algorithm="HS256",
                   headers={"kid": "k2"}): "invalid_user_token",
        jwt.encode(forged_claims, "attacker-key-0123456789abcdefghijkl", algorithm="HS256",
                   headers={"kid": "k9"}): "invalid_user_token",
        unsigned: "invalid_user_token",
        expired: "expired_user_token",
    }
    for bad, code in cases.items():
        response = httpx.get(f"{tproxy.url}/ui/profile", headers=as_user(bad), timeout=10)
        assert error(response, 401)["code"] == code, bad


def test_key_rotation(redis_url: str, fake_upstream: FakeUpstream) -> None:
    old_only = proxy_settings(redis_url, fake_upstream, user_token_keys=[KEY_OLD])
    with start_proxy(old_only) as before:
        old_token = token_for(before)
    rotated = proxy_settings(redis_url, fake_upstream, user_token_keys=[KEY_NEW, KEY_OLD])
    with start_proxy(rotated) as during:
        assert httpx.get(f"{during.url}/ui/profile", headers=as_user(old_token)).status_code == 200
        new_token = token_for(during)
        assert jwt.decode(new_token, KEY_NEW, algorithms=["HS256"], audience="persona-end-user")["sub"] == "alice"
    new_only = proxy_settings(redis_url, fake_upstream, user_token_keys=[KEY_NEW])
    with start_proxy(new_only) as after:
        assert httpx.get(f"{after.url}/ui/profile", headers=as_user(new_token)).status_code == 200
        assert error(httpx.get(f"{after.url}/ui/profile", headers=as_user(old_token)), 401)["code"] == "invalid_user_token"


def test_tenant_comes_from_the_token(tproxy: RunningProxy) -> None:
    token_b = token_for(tproxy, key=APP_KEY_B)
    created = httpx.post(
        f"{tproxy.v1}/comparisons", headers=as_user(token_b),
        json={"model": "fake-model", "messages": MESSAGES}, timeout=10,
    )
    assert created.status_code == 200
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    export_b = httpx.get(f"{tproxy.url}/admin/users/alice/export", headers={**admin, "X-Persona-Tenant": "tenant-b"})
    export_a = httpx.get(f"{tproxy.url}/admin/users/alice/export", headers={**admin, "X-Persona-Tenant": "tenant-a"})
    assert export_b.status_code == 200 and export_a.status_code in (200, 404)
    assert str(created.json()["id"]) in export_b.text and str(created.json()["id"]) not in export_a.text


def test_keys_and_production() -> None:
    with pytest.raises(ValueError, match="shorter"):
        UserTokens(Settings(user_token_keys=cast(Any, ["short"]), embedded_redis=False))
    production = Settings(
        environment="production", admin_key=cast(Any, "a-real-admin-secret"), api_keys={"k": "t"}, embedded_redis=False
    )
    with pytest.raises(Exception, match="PERSONA_USER_TOKEN_KEYS") as refused:
        UserTokens(production).mint("t", "alice", 600)
    assert getattr(refused.value, "status_code", None) == 503
    dev = UserTokens(Settings(embedded_redis=False))
    assert dev.ephemeral
    token, _ = dev.mint("t", "alice", 600)
    assert dev.verify(token).user == "alice"
    with pytest.raises(AuthenticationFailed):
        UserTokens(Settings(embedded_redis=False)).verify(token)  # another process's key
