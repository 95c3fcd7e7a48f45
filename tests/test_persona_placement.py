"""Where the persona block goes, in every flow: after the app's instructions, always a system message.

The app's instructions are its leading system and developer messages. Each flow (a plain chat call,
the four variants of a comparison and of rerank mode, the own/other/baseline answers of an online
evaluation trial) is checked on what the fake upstream received, for an app that sends no
instructions, a system message, a system and a developer message, or a developer message only.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.personalize.block import place_persona
from tests.support.fake_upstream import FakeUpstream
from tests.support.online_eval import create_run, give_personas
from tests.support.proxy import APP_KEY_A, RunningProxy, admin_client, app_client

BLOCK_TAG = "<user_preferences>"
PROMPT = {"role": "user", "content": "Name a fruit."}
SYSTEM = {"role": "system", "content": "You are the ACME assistant."}
DEVELOPER = {"role": "developer", "content": "Answer in one word."}
APPS = {
    "no instructions": [PROMPT],
    "system": [SYSTEM, PROMPT],
    "system and developer": [SYSTEM, DEVELOPER, PROMPT],
    "developer only": [DEVELOPER, PROMPT],
}


def instructions_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["role"] in ("system", "developer")]


def assert_placed(sent: list[dict[str, Any]], app: list[dict[str, Any]], *, moved: bool) -> None:
    """The app's instructions (re-roled to assistant when `moved`), then exactly one block as a system
    message, then the rest of the app's conversation, unchanged."""
    blocks = [i for i, m in enumerate(sent) if BLOCK_TAG in str(m.get("content"))]
    assert len(blocks) == 1, sent
    at = blocks[0]
    assert sent[at]["role"] == "system", sent
    instructions = instructions_of(app)
    expected = [{**m, "role": "assistant"} for m in instructions] if moved else instructions
    assert sent[:at] == expected, sent
    assert sent[at + 1 :] == app[len(instructions) :], sent


def assert_variants_placed(bodies: list[dict[str, Any]], app: list[dict[str, Any]]) -> None:
    """Four variants: instructions kept or moved to assistant, each at temperature 1.0 and 0.1."""
    seen = set()
    for body in bodies:
        at = next(i for i, m in enumerate(body["messages"]) if BLOCK_TAG in str(m.get("content")))
        moved = any(m["role"] == "assistant" for m in body["messages"][:at])
        assert_placed(body["messages"], app, moved=moved)
        seen.add((moved, body["temperature"]))
    expected = {(False, 1.0), (False, 0.1), (True, 1.0), (True, 0.1)}
    if not instructions_of(app):  # nothing to move: the two layouts are the same conversation
        expected = {(False, 1.0), (False, 0.1)}
    assert seen == expected and len(bodies) == 4


@pytest.fixture
def alice_persona(proxy: RunningProxy) -> None:
    with admin_client(proxy) as c:
        resp = c.put("/admin/users/alice/persona", json={"text": "Loves kiwis."})
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("app", APPS.values(), ids=list(APPS))
def test_chat(proxy: RunningProxy, fake_upstream: FakeUpstream, alice_persona: None, app: list[dict[str, Any]]) -> None:
    with app_client(proxy) as c:
        resp = c.post("/v1/chat/completions", json={"model": "fake-model", "messages": app, "user": "alice"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-persona-version"] == "1"
    (sent,) = fake_upstream.chat_requests
    assert_placed(sent.body["messages"], app, moved=False)


@pytest.mark.parametrize("app", APPS.values(), ids=list(APPS))
def test_comparison_variants(
    proxy: RunningProxy, fake_upstream: FakeUpstream, alice_persona: None, app: list[dict[str, Any]]
) -> None:
    with app_client(proxy) as c:
        resp = c.post("/v1/comparisons", json={"user": "alice", "model": "fake-model", "messages": app})
    assert resp.status_code == 200, resp.text
    assert resp.json()["persona_version"] == 1
    assert_variants_placed([r.body for r in fake_upstream.chat_requests], app)


@pytest.mark.parametrize("app", APPS.values(), ids=list(APPS))
def test_rerank_variants(
    proxy: RunningProxy, fake_upstream: FakeUpstream, alice_persona: None, app: list[dict[str, Any]]
) -> None:
    resp = httpx.post(
        f"{proxy.v1}/chat/completions",
        json={"model": "fake-model", "messages": app, "user": "alice"},
        headers={"Authorization": f"Bearer {APP_KEY_A}", "X-Persona-Mode": "rerank", "X-Persona-Reranker": "judge"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-persona-version"] == "1"
    candidates = [r.body for r in fake_upstream.chat_requests if "response_format" not in r.body]
    assert_variants_placed(candidates, app)


@pytest.mark.parametrize("app", APPS.values(), ids=list(APPS))
def test_evaluation_conditions(proxy: RunningProxy, fake_upstream: FakeUpstream, app: list[dict[str, Any]]) -> None:
    give_personas(proxy)
    run_id = create_run(proxy)
    with app_client(proxy) as c:
        resp = c.post(f"/v1/evaluations/{run_id}/trials", json={"user": "alice", "messages": app})
    assert resp.status_code == 201, resp.text
    bodies = [r.body for r in fake_upstream.chat_requests]
    with_block = [b for b in bodies if any(BLOCK_TAG in str(m.get("content")) for m in b["messages"])]
    assert len(bodies) == 3 and len(with_block) == 2  # own and other carry a block, the baseline none
    for body in with_block:
        assert_placed(body["messages"], app, moved=False)
    (baseline,) = [b for b in bodies if b not in with_block]
    assert baseline["messages"] == app
    own = [b for b in with_block if "STYLE-alice" in str(b["messages"])]
    assert len(own) == 1


ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool"])
MESSAGES = st.lists(st.fixed_dictionaries({"role": ROLES, "content": st.text(alphabet="xyz", max_size=8)}), max_size=8)


@given(messages=MESSAGES, instructions_as=st.sampled_from([None, "assistant"]))
def test_placement_of_any_conversation(messages: list[dict[str, Any]], instructions_as: str | None) -> None:
    placed = place_persona(messages, "BLOCK", instructions_as=instructions_as)
    at = [i for i, m in enumerate(placed) if m["content"] == "BLOCK" and m["role"] == "system"]
    leading = 0
    while leading < len(messages) and messages[leading]["role"] in ("system", "developer"):
        leading += 1
    assert at == [leading]
    assert [m["content"] for m in placed[:leading]] == [m["content"] for m in messages[:leading]]
    if instructions_as is not None:
        assert all(m["role"] == instructions_as for m in placed[:leading])
    assert placed[leading + 1 :] == messages[leading:]
    assert place_persona(messages, None) == messages
