"""The chat request rule has one source: the schema OpenAPI publishes is the one every call is held to."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.api.chat_schema import validate_chat_body
from middleware.errors import PersonaError
from middleware.quota_policy import DEFAULT_MAX_N
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import RunningProxy, app_client

ANY_JSON = st.one_of(st.none(), st.booleans(), st.integers(-3, 12), st.text(max_size=4), st.just([]), st.just({}))
ABSENT = object()


def mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` four times out of five, else `other` (so whole bodies are often valid, often not)."""
    return st.integers(0, 4).flatmap(lambda k: valid if k else other)


PART = mostly(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=4)}), ANY_JSON)
ROLE = mostly(st.sampled_from(["system", "developer", "user", "assistant", "tool"]), st.one_of(ANY_JSON, st.just(ABSENT)))
CONTENT = mostly(st.one_of(st.text(max_size=4), st.lists(PART, max_size=2), st.none()), ANY_JSON)
MESSAGE = mostly(
    st.builds(lambda role, content: {k: v for k, v in (("role", role), ("content", content)) if v is not ABSENT}, ROLE, CONTENT),
    ANY_JSON,
)
FIELDS = {
    "model": mostly(st.just("fake-model"), st.one_of(ANY_JSON, st.just(ABSENT))),
    "messages": mostly(st.lists(MESSAGE, min_size=1, max_size=3), st.one_of(ANY_JSON, st.just(ABSENT))),
    "stream": mostly(st.one_of(st.booleans(), st.just(ABSENT)), ANY_JSON),
    "n": mostly(st.one_of(st.integers(1, 8), st.just(ABSENT)), st.one_of(ANY_JSON, st.integers(-2, 12))),
    "user": mostly(st.one_of(st.text(max_size=4), st.just(ABSENT)), ANY_JSON),
    "temperature": st.one_of(ANY_JSON, st.just(ABSENT)),
    "base_url": mostly(st.just(ABSENT), ANY_JSON),
}
BODY = mostly(
    st.fixed_dictionaries(FIELDS).map(lambda body: {k: v for k, v in body.items() if v is not ABSENT}),
    ANY_JSON,
)


def published_schema(proxy: RunningProxy) -> dict[str, Any]:
    spec = httpx.get(f"{proxy.url}/openapi.json", timeout=10).json()
    schema: dict[str, Any] = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    return schema


def accepted(body: Any) -> bool:
    try:
        validate_chat_body(body)
    except PersonaError as exc:
        assert exc.status_code in (400, 422) and exc.message
        return False
    return True


def test_every_body_is_accepted_exactly_when_the_published_schema_allows_it(proxy: RunningProxy) -> None:
    published = jsonschema.Draft202012Validator(published_schema(proxy))
    assert "maximum" not in published.schema["properties"]["n"]  # the tenant's cap, not the schema's
    verdicts: set[bool] = set()

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=BODY)
    def agree(body: Any) -> None:
        verdict = accepted(body)
        assert verdict == published.is_valid(body), body
        verdicts.add(verdict)

    agree()
    assert verdicts == {True, False}  # both sides of the rule were exercised


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"n": 0}, "n"),
        ({"messages": [{"role": "bogus", "content": "q"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"stream": "yes"}, "stream"),
        ({"model": ""}, "model"),
    ],
)
def test_what_the_schema_forbids_is_a_422_that_names_the_field(
    proxy: RunningProxy, fake_upstream: FakeUpstream, change: dict[str, Any], param: str
) -> None:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "q"}], **change}
    with app_client(proxy) as c:
        resp = c.post("/v1/chat/completions", json=body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "validation_error" and error["param"] == param and param in error["message"]
    assert fake_upstream.chat_requests == []


def test_what_the_schema_allows_goes_upstream(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user", "content": "again"},
    ]
    with app_client(proxy) as c:
        resp = c.post("/v1/chat/completions", json={"model": "fake-model", "messages": messages, "n": DEFAULT_MAX_N})
    assert resp.status_code == 200, resp.text
    assert fake_upstream.chat_requests[-1].body["n"] == DEFAULT_MAX_N
