"""The lean dispatch of the chat-like routes (api/fast_path.py) answers exactly as the FastAPI stack:
the same proxy served twice, once as built and once with the lean dispatch left out, asked the same
good and bad requests on /v1/chat/completions, /v1/responses and /v1/messages (with and without /v1)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from fastapi import FastAPI

from middleware.api.fast_path import LEAN_ROUTES, LeanDispatch
from middleware.app import create_app
from tests.support.dropin import give_persona
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import APP_KEY_A, RunningProxy, proxy_settings
from tests.support.server_thread import ServerThread

ORIGIN = "https://app.example.com"
USER = "google-oauth2|fast"
MAX_BODY = 20_000
# Values that differ from one answer to the next (time, ids, measured overhead).
VOLATILE = {
    "date",
    "x-persona-overhead-ms",
    "content-length",
    "x-request-id",
    "request-id",
    "x-persona-response-id",
}


@pytest.fixture
def proxies(redis_url: str, fake_upstream: FakeUpstream) -> Iterator[tuple[RunningProxy, RunningProxy]]:
    settings = proxy_settings(
        redis_url,
        fake_upstream,
        anthropic_api_base=fake_upstream.root_url,
        cors_origins=[ORIGIN],
        max_body_bytes=MAX_BODY,
    )
    lean_app = create_app(settings)
    full_app = create_app(settings)
    # The FastAPI stack alone: the stack FastAPI builds, without the lean dispatch in front.
    full_app.build_middleware_stack = lambda: FastAPI.build_middleware_stack(full_app)  # type: ignore[method-assign]
    lean = RunningProxy(ServerThread(lean_app).start(), settings)
    full = RunningProxy(ServerThread(full_app).start(), settings)
    try:
        give_persona(lean, USER)  # one Redis: both see it
        yield lean, full
    finally:
        lean.server.stop()
        full.server.stop()


def test_the_lean_dispatch_serves_the_three_routes(proxies: tuple[RunningProxy, RunningProxy]) -> None:
    lean, full = proxies
    assert isinstance(lean.server.app.middleware_stack, LeanDispatch)
    assert sorted(lean.server.app.middleware_stack.endpoints) == sorted(LEAN_ROUTES)
    assert not isinstance(full.server.app.middleware_stack, LeanDispatch)


CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "user": USER}
RESPONSES = {"model": "fake-model", "input": "hi", "user": USER}
MESSAGES = {
    "model": "claude-fake",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "hi"}],
    "metadata": {"user_id": USER},
}
AUTH = {"Authorization": f"Bearer {APP_KEY_A}", "Origin": ORIGIN}
JSON = {**AUTH, "content-type": "application/json"}
BIG = b'{"model": "x", "messages": [], "pad": "' + b"x" * MAX_BODY + b'"}'

# (name, method, path, headers, body): each sent to both servers.
CASES: list[tuple[str, str, str, dict[str, str], Any]] = []
for route, good in (("chat/completions", CHAT), ("responses", RESPONSES), ("messages", MESSAGES)):
    for prefix in ("/v1/", "/"):
        path = prefix + route
        CASES += [
            (f"{path} ok", "POST", path, AUTH, good),
            (f"{path} stream", "POST", path, AUTH, {**good, "stream": True}),
            (f"{path} mode off", "POST", path, {**AUTH, "X-Persona-Mode": "off"}, good),
            (f"{path} bad mode", "POST", path, {**AUTH, "X-Persona-Mode": "loud"}, good),
            (f"{path} bad json", "POST", path, JSON, b'{"model": '),
            (f"{path} empty body", "POST", path, JSON, b""),
            (f"{path} not an object", "POST", path, JSON, b"[1, 2]"),
            (f"{path} no key", "POST", path, {"Origin": ORIGIN}, good),
            (f"{path} wrong key", "POST", path, {**AUTH, "Authorization": "Bearer sk-nope"}, good),
            (f"{path} missing model", "POST", path, AUTH, {k: v for k, v in good.items() if k != "model"}),
            (f"{path} forbidden field", "POST", path, AUTH, {**good, "api_base": "http://evil"}),
            (f"{path} too large", "POST", path, JSON, BIG),
            (f"{path} too large chunked", "POST", path, JSON, (BIG[:10_000], BIG[10_000:])),
            (f"{path} not json", "POST", path, {**AUTH, "content-type": "application/octet-stream"}, b"\x00"),
            (f"{path} trailing slash", "POST", path + "/", AUTH, good),
            (f"{path} GET", "GET", path, AUTH, None),
            (
                f"{path} preflight",
                "OPTIONS",
                path,
                {
                    "Origin": ORIGIN,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization,content-type",
                },
                None,
            ),
        ]


def ask(client: httpx.Client, method: str, path: str, headers: dict[str, str], body: Any) -> httpx.Response:
    if isinstance(body, dict):
        return client.request(method, path, headers=headers, json=body)
    if isinstance(body, bytes) or body is None:
        return client.request(method, path, headers=headers, content=body)
    return client.request(method, path, headers=headers, content=iter(body))  # chunked


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, not the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def body_of(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").startswith("application/json"):
        data = response.json()
        return data if response.status_code >= 400 else shape(data)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return [line.split(":", 1)[0] for line in response.text.splitlines()]  # the event framing
    return response.text


def headers_of(response: httpx.Response) -> dict[str, str]:
    return {k: ("*" if k in VOLATILE else v) for k, v in response.headers.items()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_lean_and_fastapi_answer_alike(
    proxies: tuple[RunningProxy, RunningProxy], case: tuple[str, str, str, dict[str, str], Any]
) -> None:
    _, method, path, headers, body = case
    answers = []
    for proxy in proxies:
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            response = ask(client, method, path, headers, body)
            answers.append((response.status_code, headers_of(response), body_of(response)))
    (lean_status, lean_headers, lean_body), (full_status, full_headers, full_body) = answers
    assert lean_status == full_status, (lean_body, full_body)
    assert lean_headers == full_headers
    assert lean_body == full_body
    if method == "POST" and path.endswith("messages") and lean_status >= 400 and isinstance(lean_body, dict):
        assert lean_body["type"] == "error", lean_body  # Anthropic's shape on the Messages route


def test_the_sdks_read_both_alike(proxies: tuple[RunningProxy, RunningProxy]) -> None:
    got = []
    for proxy in proxies:
        chat = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
        completion = chat.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], user=USER
        )
        response = chat.responses.create(model="fake-model", input="hi", user=USER)
        claude = anthropic.Anthropic(base_url=proxy.url, api_key=APP_KEY_A, max_retries=0)
        message = claude.messages.create(
            model="claude-fake",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
            metadata={"user_id": USER},
        )
        with pytest.raises(openai.AuthenticationError) as refused:
            openai.OpenAI(base_url=proxy.v1, api_key="sk-nope", max_retries=0).chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}]
            )
        got.append(
            (
                completion.choices[0].message.content,
                response.output_text,
                message.content[0].text,  # type: ignore[union-attr]
                refused.value.body,
            )
        )
    assert got[0] == got[1]
    assert got[0][0] and got[0][1] and got[0][2]
