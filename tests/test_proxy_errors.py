"""Bad keys, bad bodies and credential redirection get OpenAI-shaped errors the SDK understands."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import ADMIN_KEY, APP_KEY_A, RunningProxy

MESSAGES = [{"role": "user", "content": "q"}]


def sdk(proxy: RunningProxy, key: str = APP_KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key=key, max_retries=0)


def assert_openai_shape(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


def test_wrong_app_key_is_401(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(proxy, "sk-wrong").chat.completions.create(model="fake-model", messages=MESSAGES)  # type: ignore[arg-type]
    response = httpx.post(f"{proxy.v1}/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert_openai_shape(response, 401, "invalid_api_key")
    assert fake_upstream.chat_requests == []


def test_invalid_json_is_400(proxy: RunningProxy) -> None:
    response = httpx.post(
        f"{proxy.v1}/chat/completions", content=b'{"model": ', headers={"Authorization": f"Bearer {APP_KEY_A}"}
    )
    assert_openai_shape(response, 400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fake-model"}, "messages"),
        ({"messages": MESSAGES}, "model"),
        ({"model": "fake-model", "messages": []}, "messages"),
        ({"model": "fake-model", "messages": [{"content": "no role"}]}, "messages[0]"),
        ([1, 2, 3], None),
    ],
)
def test_schema_errors_are_422(proxy: RunningProxy, body: Any, param: str | None) -> None:
    response = httpx.post(f"{proxy.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {APP_KEY_A}"})
    error = assert_openai_shape(response, 422, "validation_error")
    assert error["param"] == param


def test_schema_error_raises_the_sdk_class(proxy: RunningProxy) -> None:
    with pytest.raises(openai.UnprocessableEntityError):
        sdk(proxy).chat.completions.create(model="fake-model", messages=[])


def test_too_large_body_is_413(redis_url: str, fake_upstream: FakeUpstream) -> None:
    from tests.support.proxy import proxy_settings, start_proxy

    running = start_proxy(proxy_settings(redis_url, fake_upstream, max_body_bytes=10_000))
    try:
        big = [{"role": "user", "content": "x" * 20_000}]
        with pytest.raises(openai.APIStatusError) as err:
            sdk(running).chat.completions.create(model="fake-model", messages=big)  # type: ignore[arg-type]
        assert err.value.status_code == 413

        def chunks() -> Any:  # no Content-Length: counted while it streams in
            for _ in range(30):
                yield b" " * 1000

        response = httpx.post(
            f"{running.v1}/chat/completions", content=chunks(), headers={"Authorization": f"Bearer {APP_KEY_A}"}
        )
        assert_openai_shape(response, 413, "payload_too_large")
        assert fake_upstream.chat_requests == []
    finally:
        running.server.stop()


@pytest.mark.parametrize("field", ["api_base", "base_url", "api_key", "custom_llm_provider", "extra_headers"])
def test_fields_that_redirect_the_upstream_are_refused(
    proxy: RunningProxy, fake_upstream: FakeUpstream, field: str
) -> None:
    with FakeUpstream() as attacker:
        value: Any = attacker.base_url if field != "extra_headers" else {"Authorization": "Bearer x"}
        with pytest.raises(openai.BadRequestError) as err:
            sdk(proxy).chat.completions.create(
                model="fake-model", messages=MESSAGES, extra_body={field: value}  # type: ignore[arg-type]
            )
        assert err.value.body["param"] == field  # type: ignore[index]
        assert attacker.requests == []
        assert fake_upstream.chat_requests == []


def test_unknown_route_and_method_are_openai_shaped(proxy: RunningProxy) -> None:
    assert_openai_shape(httpx.get(f"{proxy.url}/nothing-here"), 404)
    # Unknown /v1 routes are the upstream's to answer (passed through after the key check).
    assert_openai_shape(httpx.get(f"{proxy.url}/v1/nothing-here"), 401)
    app = {"Authorization": f"Bearer {APP_KEY_A}"}
    assert_openai_shape(httpx.get(f"{proxy.url}/v1/nothing-here", headers=app), 404)
    assert_openai_shape(httpx.get(f"{proxy.v1}/chat/completions"), 405)


def test_bad_persona_mode_header(proxy: RunningProxy) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk(proxy).chat.completions.create(
            model="fake-model", messages=MESSAGES, extra_headers={"X-Persona-Mode": "sideways"}  # type: ignore[arg-type]
        )


def test_admin_routes_need_the_admin_key(proxy: RunningProxy) -> None:
    url = f"{proxy.url}/admin/users/alice/persona"
    assert_openai_shape(httpx.get(url), 401)
    assert_openai_shape(httpx.get(url, headers={"Authorization": f"Bearer {APP_KEY_A}"}), 403)
    assert_openai_shape(httpx.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}), 404, "not_found")


def test_bad_persona_body_is_422_and_keeps_the_stored_persona(proxy: RunningProxy) -> None:
    url = f"{proxy.url}/admin/users/alice/persona"
    headers = proxy.admin_headers()
    assert httpx.put(url, json={"text": "first"}, headers=headers).status_code == 200
    assert_openai_shape(httpx.put(url, json={"text": ""}, headers=headers), 422, "validation_error")
    bad_json_headers = {**headers, "Content-Type": "application/json"}
    assert_openai_shape(httpx.put(url, content=b"{", headers=bad_json_headers), 400, "invalid_json")
    assert httpx.get(url, headers=headers).json()["text"] == "first"


def test_persona_versions_and_rollback_restore_the_text_exactly(proxy: RunningProxy) -> None:
    url = f"{proxy.url}/admin/users/alice/persona"
    headers = proxy.admin_headers()
    first_text = "Likes  tabs\tand  odd   spacing ✓ — exactly.\n"
    httpx.put(url, json={"text": first_text}, headers=headers)
    httpx.put(url, json={"text": "second"}, headers=headers)
    versions = httpx.get(f"{url}/versions", headers=headers).json()
    assert [(v["version"], v["current"]) for v in versions] == [(1, False), (2, True)]
    restored = httpx.post(f"{url}/rollback", json={"version": 1}, headers=headers).json()
    assert restored["text"] == first_text and restored["version"] == 1
    assert httpx.get(url, headers=headers).json()["text"] == first_text
    assert_openai_shape(httpx.post(f"{url}/rollback", json={"version": 9}, headers=headers), 404)


def test_delete_persona_switches_personalization_off(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    url = f"{proxy.url}/admin/users/alice/persona"
    headers = proxy.admin_headers()
    httpx.put(url, json={"text": "DELETE-ME"}, headers=headers)
    assert httpx.delete(url, headers=headers).status_code == 200
    sdk(proxy).chat.completions.create(model="fake-model", messages=MESSAGES, user="alice")  # type: ignore[arg-type]
    assert "DELETE-ME" not in str(fake_upstream.chat_requests[-1].body["messages"])
    assert httpx.get(url, headers=headers).status_code == 404


def test_values_beyond_64_bit_integers_are_refused_before_anything_is_stored(proxy: RunningProxy) -> None:
    url = f"{proxy.url}/admin/users/alice/persona"
    exemplar = {
        "context": [{"role": "user", "content": "q", "vendor_field": 2**70}],
        "chosen": {"role": "assistant", "content": "a"},
        "rejected": {"role": "assistant", "content": "b"},
    }
    put = httpx.put(url, json={"text": "t", "exemplars": [exemplar]}, headers=proxy.admin_headers())
    assert_openai_shape(put, 400)
    assert put.json()["error"]["code"] == "integer_out_of_range"
    assert httpx.get(url, headers=proxy.admin_headers()).status_code == 404
