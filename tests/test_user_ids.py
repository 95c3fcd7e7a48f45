"""End-user ids: any string an SDK accepts works, end to end, without collisions between users or
tenants; only empty ids, ids over 256 characters and control characters are refused."""

from __future__ import annotations

import fnmatch
import sys
import unicodedata
from typing import Any, cast

import httpx
import openai
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.errors import InvalidUserId
from middleware.identity import user_id_problem, validate_user_id
from middleware.store import keys
from tests.support.dropin import PERSONA_MARK, give_persona, user_url
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import APP_KEY_A, APP_KEY_B, RunningProxy

USER_IDS = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=256)
REAL_IDS = [
    "auth0|5f7c1e2a9b",
    "google-oauth2|1234567890",
    "user 42",
    "u/42",
    "dGVzdA==",
    "alice@example.com",
    "名前-ユーザー",
    "{braces}:and*glob?[x]\\%25",
    "x" * 256,
]


def redis_glob(pattern: str, key: str) -> bool:
    """Redis MATCH semantics for the patterns keys.py builds (backslash escapes, [] classes)."""
    return fnmatch.fnmatchcase(key, pattern)


@given(USER_IDS, USER_IDS)
def test_distinct_ids_never_share_a_key_or_a_scan_pattern(a: str, b: str) -> None:
    validate_user_id(a)
    if a == b:
        return
    assert keys.persona_current("t", a) != keys.persona_current("t", b)
    assert keys.user_tag("t", a) != keys.user_tag("t", b)
    # The hash tag is the whole {tenant:user}: the first '}' after '{' closes it.
    tag = keys.user_tag("t", a)
    assert tag[tag.index("{") + 1 : tag.index("}")] == f"t:{keys.escape_user(a)}"
    assert tag.endswith("}")
    for pattern_char in "*?[]\\":
        assert pattern_char not in keys.escape_user(a)
    assert not redis_glob(keys.user_pattern("t", a), keys.persona_current("t", b))


@pytest.mark.parametrize(
    ("user", "why"),
    [("", "empty"), ("x" * 257, "longer than 256"), ("a\nb", "control character"), ("a\x00b", "control character")],
)
def test_only_empty_long_and_control_characters_are_refused(user: str, why: str) -> None:
    with pytest.raises(InvalidUserId) as err:
        validate_user_id(user)
    assert why in str(err.value)


def test_the_refused_characters_are_exactly_unicodes_controls_and_surrogates() -> None:
    """Every code point is refused exactly when Unicode files it as a control character (Cc) or a
    surrogate (Cs), and the message names the first such character and its kind."""
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        category = unicodedata.category(char)
        problem = user_id_problem(f"ab{char}c")
        if category == "Cc":
            assert problem == f"the end-user id contains a control character (U+{code:04X})"
        elif category == "Cs":
            assert problem == f"the end-user id contains an unpaired surrogate (U+{code:04X})"
        else:
            assert problem is None, (hex(code), problem)
    assert user_id_problem("ok\udc80then\x07") == "the end-user id contains an unpaired surrogate (U+DC80)"


@pytest.mark.parametrize("user", REAL_IDS)
def test_real_ids_work_end_to_end(proxy: RunningProxy, fake_upstream: FakeUpstream, user: str) -> None:
    give_persona(proxy, user)
    headers = proxy.admin_headers()
    got = httpx.get(user_url(proxy, user, "/persona"), headers=headers)
    assert got.status_code == 200 and got.json()["user"] == user
    chat = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
    chat.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "q"}], user=user)
    assert PERSONA_MARK in str(fake_upstream.chat_requests[-1].body["messages"])
    # Another tenant's app with the same id gets no persona.
    other = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_B, max_retries=0)
    other.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "q"}], user=user)
    assert PERSONA_MARK not in str(fake_upstream.chat_requests[-1].body["messages"])
    assert httpx.get(user_url(proxy, user, "/persona"), headers=proxy.admin_headers("tenant-b")).status_code == 404


def test_bad_ids_answer_400_saying_why(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    api = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "q"}], user="y" * 300)
    assert "longer than 256" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        api.responses.create(model="fake-model", input="q", safety_identifier="bad\ttab")
    assert "control character" in err.value.message
    assert fake_upstream.requests == []


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=USER_IDS, b=USER_IDS)
def test_arbitrary_ids_isolated_and_forgotten(proxy: RunningProxy, a: str, b: str) -> None:
    if a == b:
        return
    r = redis.Redis.from_url(proxy.settings.redis_url)
    try:
        give_persona(proxy, a, text=f"persona A {PERSONA_MARK}")
        give_persona(proxy, b, text="persona B")
        headers = proxy.admin_headers()
        assert httpx.get(user_url(proxy, a, "/persona"), headers=headers).json()["text"].startswith("persona A")
        assert httpx.get(user_url(proxy, b, "/persona"), headers=headers).json()["text"] == "persona B"
        assert httpx.get(user_url(proxy, a, "/persona"), headers=proxy.admin_headers("tenant-b")).status_code == 404

        forgotten = httpx.delete(user_url(proxy, a), headers=headers)
        assert forgotten.status_code == 200, forgotten.text
        assert list(r.scan_iter(match=keys.user_pattern("tenant-a", a))) == []
        assert not r.sismember(keys.tenant_users("tenant-a"), a)
        assert httpx.get(user_url(proxy, b, "/persona"), headers=headers).json()["text"] == "persona B"
    finally:
        httpx.delete(user_url(proxy, b), headers=proxy.admin_headers())
        r.close()


def test_utf8_header_id_is_the_same_user_as_in_the_body(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "名前 ユーザー")
    answer = httpx.post(
        f"{proxy.v1}/chat/completions",
        json={"model": "fake-model", "messages": [{"role": "user", "content": "q"}]},
        headers=cast(Any, {"Authorization": f"Bearer {APP_KEY_A}", "X-Persona-User": "名前 ユーザー".encode()}),
    )
    assert answer.status_code == 200, answer.text
    assert PERSONA_MARK in str(fake_upstream.chat_requests[-1].body["messages"])
