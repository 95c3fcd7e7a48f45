"""Bad input gets a clear, OpenAI-shaped 4xx on every JSON route, never a 5xx."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from middleware.config import Settings
from middleware.json_limits import MAX_DEPTH
from middleware.preferences.importer import run_import
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import ADMIN_KEY, APP_KEY_A, RunningProxy, admin_client, proxy_settings, start_proxy
from tests.support.stored import stored_records

BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# A 503 that says this server lacks a feature (no LoRA head configured) answers a valid request too.
NOT_CONFIGURED = {"lora_unavailable"}


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b'{"a":' * depth + inner + b"}" * depth


HOSTILE: dict[str, bytes] = {
    "array 65 deep": b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
    "object 300 deep": nested(300),
    "array 5000 deep": b"[" * 5000 + b"]" * 5000,
    "unterminated 100000 deep": b"[" * 100_000,
    "messages with deep content": b'{"model":"m","messages":[{"role":"user","content":' + nested(200, b'"x"') + b"}]}",
    "integer beyond 64 bits": b'{"model":"m","n":18446744073709551616,"version":340282366920938463463374607431768211456}',
    "integer below int64": b'{"model":"m","seed":-9223372036854775809,"version":-9223372036854775809}',
    "unsigned 64-bit integer": b'{"version":18446744073709551615,"max_tokens":18446744073709551615}',
    "huge integer": b'{"version":' + b"9" * 4000 + b"}",
    "float overflow": b'{"version":1e999}',
    "NaN": b'{"version":NaN}',
    "invalid UTF-8": b'{"model":"m","text":"\xff\xfe\xfd"}',
    "overlong UTF-8": b'{"text":"\xc0\xaf"}',
    "lone surrogate": b'{"text":"\\ud800","user":"\\udfff"}',
    "byte order mark": b"\xef\xbb\xbf{}",
    "truncated": b'{"messages": [',
    "not JSON": b"hello=world&x=1",
    "null": b"null",
    "array root": b"[]",
    "string root": b'"text"',
    "number root": b"12",
    "empty object": b"{}",
    "wrong types": b'{"model":5,"messages":"x","user":[],"text":{},"version":"1","exemplars":7,"choice":null}',
    "NUL in strings": b'{"model":"m\\u0000","user":"a\\u0000b","text":"\\u0000","messages":[{"role":"user","content":"\\u0000"}]}',
    "many keys": b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(20_000)) + b"}",
}


def shaped(response: httpx.Response) -> dict[str, object]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, response.text[:300]
    assert error["code"] and error["message"] and error["type"], response.text[:300]
    return dict(error)


def anthropic_shaped(response: httpx.Response) -> dict[str, object]:
    """Anthropic's error shape (the /v1/messages route answers in it)."""
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, response.text[:300]
    assert body["error"]["type"] and body["error"]["message"], response.text[:300]
    return dict(body["error"])


def body_routes(proxy: RunningProxy) -> Iterator[tuple[str, str]]:
    """Every route that takes a body, from the app's own route table (as its OpenAPI schema lists it)."""
    for path, operations in proxy.server.app.openapi()["paths"].items():
        for method in sorted(m.upper() for m in operations):
            if method in BODY_METHODS:
                yield method, re.sub(r"\{[^}]+\}", "u1", path)


def test_every_route_answers_hostile_bodies_with_a_shaped_4xx(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    routes = list(body_routes(proxy))
    assert ("POST", "/v1/chat/completions") in routes and ("PUT", "/admin/users/u1/persona") in routes
    assert len(routes) >= 10
    failures = []
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        for method, path in routes:
            key = ADMIN_KEY if path.startswith("/admin") else APP_KEY_A
            headers = {
                "Authorization": f"Bearer {key}",
                "X-Persona-Tenant": "tenant-a",
                "X-Persona-User": "u1",
                "Content-Type": "application/json",
            }
            for name, payload in HOSTILE.items():
                response = client.request(method, path, content=payload, headers=headers)
                if response.status_code == 503 and response.json().get("error", {}).get("code") in NOT_CONFIGURED:
                    continue
                if response.status_code >= 500:
                    failures.append((method, path, name, response.status_code, response.text[:200]))
                elif response.status_code >= 400:
                    anthropic_shaped(response) if path.startswith("/v1/messages") else shaped(response)
    assert not failures, failures


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), 400, "json_too_deep"),
        (b"[" * 5000 + b"]" * 5000, 400, "json_too_deep"),
        (b'{"n": 9223372036854775808}', 400, "integer_out_of_range"),
        (b'{"n": -9223372036854775809}', 400, "integer_out_of_range"),
        (b'{"x": "\xff"}', 400, "invalid_encoding"),
        (b'{"x": ', 400, "invalid_json"),
    ],
)
def test_limits_are_checked_before_the_route_runs(
    proxy: RunningProxy, fake_upstream: FakeUpstream, payload: bytes, status: int, code: str
) -> None:
    response = httpx.post(
        f"{proxy.v1}/chat/completions",
        content=payload,
        headers={"Authorization": f"Bearer {APP_KEY_A}", "Content-Type": "application/json"},
    )
    assert response.status_code == status and shaped(response)["code"] == code
    assert fake_upstream.chat_requests == []


def test_depth_and_integers_at_the_limit_are_accepted(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    content = b"[" * (MAX_DEPTH - 4) + b"]" * (MAX_DEPTH - 4)  # the body wraps it in 4 more levels
    body = b'{"model":"m","seed":9223372036854775807,"messages":[{"role":"user","content":"hi","x":' + content + b"}]}"
    response = httpx.post(
        f"{proxy.v1}/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {APP_KEY_A}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert fake_upstream.chat_requests[-1].body["seed"] == 2**63 - 1


def test_a_deep_exemplar_is_refused_on_write_and_reads_keep_working(proxy: RunningProxy) -> None:
    deep: object = "x"
    for _ in range(200):
        deep = [deep]
    persona = {
        "text": "Likes short answers.",
        "exemplars": [
            {
                "context": [{"role": "user", "content": deep}],
                "chosen": {"role": "assistant", "content": "a"},
                "rejected": {"role": "assistant", "content": "b"},
            }
        ],
    }
    with admin_client(proxy) as admin:
        assert admin.put("/admin/users/u1/persona", json={"text": "Likes short answers."}).status_code == 200
        refused = admin.put("/admin/users/u1/persona", json=persona)
        assert refused.status_code == 400 and shaped(refused)["code"] == "json_too_deep"
        for path in ("/admin/users/u1/persona", "/admin/users/u1/persona/versions", "/admin/users/u1/export"):
            assert admin.get(path).status_code == 200, path
        assert admin.get("/admin/users/u1/persona").json()["version"] == 1


def _chunks(total: int, size: int = 65536) -> Iterator[bytes]:
    yield b'{"model":"m","messages":[{"role":"user","content":"'
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"}]}'


def test_bodies_over_the_limit_get_413_declared_or_chunked(redis_url: str, fake_upstream: FakeUpstream) -> None:
    with start_proxy(proxy_settings(redis_url, fake_upstream, max_body_bytes=100_000)) as proxy:
        routes = list(body_routes(proxy))
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            for method, path in routes:
                key = ADMIN_KEY if path.startswith("/admin") else APP_KEY_A
                headers = {"Authorization": f"Bearer {key}", "X-Persona-Tenant": "tenant-a"}
                declared = client.request(method, path, content=b"{" + b" " * 200_000 + b"}", headers=headers)
                chunked = client.request(method, path, content=_chunks(200_000), headers=headers)
                for response in (declared, chunked):
                    assert response.status_code == 413, (method, path, response.text[:200])
                    if path.startswith("/v1/messages"):
                        assert anthropic_shaped(response)["type"] == "request_too_large"
                    else:
                        assert shaped(response)["code"] == "payload_too_large"
    assert fake_upstream.chat_requests == []


def test_framework_errors_use_the_project_shape(proxy: RunningProxy) -> None:
    with httpx.Client(base_url=proxy.url, headers={"Authorization": f"Bearer {APP_KEY_A}"}, timeout=10) as client:
        missing = client.get("/admin/nothing-here")  # (unknown /v1 paths are passed through upstream)
        wrong_method = client.delete("/v1/chat/completions")
        bad_param = client.post("/v1/preferences", json={"user": "u1"})
    assert missing.status_code == 404 and shaped(missing)["code"] == "not_found"
    assert wrong_method.status_code == 405 and shaped(wrong_method)["code"] == "method_not_allowed"
    assert bad_param.status_code in (400, 422) and shaped(bad_param)["code"]


async def test_import_refuses_records_beyond_the_limits(redis_url: str, tmp_path: Path) -> None:
    deep: object = "x"
    for _ in range(100):
        deep = [deep]

    def row(i: int, content: object) -> str:
        pair = {
            "user_id": "u1",
            "context": [{"role": "user", "content": content}],
            "chosen": {"role": "assistant", "content": f"chosen {i}"},
            "rejected": {"role": "assistant", "content": "rejected"},
        }
        return json.dumps(pair)

    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join([row(1, "ok"), row(2, deep), row(3, "fine")]) + "\n", encoding="utf-8")
    settings = Settings(redis_url=redis_url, embedded_redis=False)
    summary = await run_import(settings, path, format="native", tenant="acme", progress=False)
    assert (summary["imported"], summary["bad"]) == (2, 1)
    assert summary["bad_lines"][0]["line"] == 2 and "deeper than" in summary["bad_lines"][0]["error"]
    assert [p["chosen"]["content"] for p in stored_records(redis_url, "acme", "u1")] == ["chosen 1", "chosen 3"]
