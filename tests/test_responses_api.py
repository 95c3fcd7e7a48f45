"""POST /v1/responses personalized, and a stored response reachable only by its tenant: driven with
the official openai SDK against the fake upstream (which speaks the Responses API)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.support.dropin import PERSONA_MARK, give_persona
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import APP_KEY_A, APP_KEY_B, RunningProxy

APP_INSTRUCTIONS = "You are the ACME assistant. Answer in English."


def client(proxy: RunningProxy, key: str = APP_KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key=key, max_retries=0)


def sent_bodies(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [r.body for r in fake.requests if r.path == "/v1/responses" and r.method == "POST"]


def assert_persona_once_after(instructions: str, app: str | None) -> None:
    assert instructions.count(PERSONA_MARK) == 1
    assert instructions.count("<user_preferences>") == 1
    if app is not None:
        assert instructions.startswith(app + "\n\n")
    assert instructions.rstrip().endswith("</user_preferences>")


def test_plain_response_carries_the_persona_upstream_and_hides_it_from_the_app(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    give_persona(proxy, "auth0|5f7c1e")
    raw = client(proxy).responses.with_raw_response.create(
        model="fake-model", input="hello there", instructions=APP_INSTRUCTIONS, user="auth0|5f7c1e"
    )
    response = raw.parse()
    sent = sent_bodies(fake_upstream)[-1]
    assert_persona_once_after(sent["instructions"], APP_INSTRUCTIONS)
    assert sent["input"] == "hello there"  # never into input items
    assert response.instructions == APP_INSTRUCTIONS
    assert response.output_text == "fake answer to: hello there"
    assert PERSONA_MARK not in raw.http_response.text
    assert raw.headers["x-persona-version"] == "1"
    assert float(raw.headers["x-persona-overhead-ms"]) >= 0
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-ratelimit-remaining-requests"] == "9999"
    assert "openai-organization" not in raw.headers


@pytest.mark.parametrize(
    ("persona", "swapped"),
    [
        # ASCII only: the sent text is found in the indented JSON, swapped, the upstream's bytes kept
        ("Prefers short answers.", True),
        # non-ASCII, written as \u escapes: not found as sent, so parsed and rewritten
        ("Préfère les réponses courtes.", False),
    ],
)
def test_instructions_restored_however_the_upstream_encodes_the_response(
    proxy: RunningProxy, fake_upstream: FakeUpstream, persona: str, swapped: bool
) -> None:
    give_persona(proxy, "noor", text=f"{persona} {PERSONA_MARK}")
    fake_upstream.script(Reply(content="ok", indented=True))
    raw = client(proxy).responses.with_raw_response.create(
        model="fake-model", input="hello", instructions=APP_INSTRUCTIONS, user="noor"
    )
    response = raw.parse()
    assert_persona_once_after(sent_bodies(fake_upstream)[-1]["instructions"], APP_INSTRUCTIONS)
    assert response.instructions == APP_INSTRUCTIONS and response.output_text == "ok"
    text = raw.http_response.text
    assert PERSONA_MARK not in text and "\\u00e9" not in text and "é" not in text
    assert text.startswith('{\n  "id": ') is swapped  # kept as the upstream wrote it, or rewritten
    # the owner was recorded under the response's own id (not an output item's)
    assert response.output[0].id != response.id
    again = client(proxy).responses.retrieve(response.id)
    assert again.instructions == APP_INSTRUCTIONS


def test_no_app_instructions_gives_the_block_alone_and_null_back(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "bob")
    response = client(proxy).responses.create(model="fake-model", input="hi", extra_headers={"X-Persona-User": "bob"})
    sent = sent_bodies(fake_upstream)[-1]
    assert sent["instructions"].startswith("<user_preferences>")
    assert_persona_once_after(sent["instructions"], None)
    assert response.instructions is None


def test_stream_restores_instructions_and_relays_every_other_event(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    give_persona(proxy, "alice@example.com")
    with httpx.stream(
        "POST",
        f"{proxy.v1}/responses",
        json={"model": "fake-model", "input": "tell me", "instructions": APP_INSTRUCTIONS, "stream": True, "user": "alice@example.com"},
        headers={"Authorization": f"Bearer {APP_KEY_A}"},
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["x-request-id"].startswith("req_")
        text = answer.read().decode()
    assert PERSONA_MARK not in text and "[DONE]" not in text
    events = [e for e in text.split("\n\n") if e.strip()]
    names = [e.split("\n")[0].removeprefix("event: ") for e in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    datas = [json.loads(e.split("\n")[1].removeprefix("data: ")) for e in events]
    assert [d["sequence_number"] for d in datas] == list(range(len(datas)))
    for data in datas:
        if data["type"] in ("response.created", "response.in_progress", "response.completed"):
            assert data["response"]["instructions"] == APP_INSTRUCTIONS
    sent = sent_bodies(fake_upstream)[-1]
    assert_persona_once_after(sent["instructions"], APP_INSTRUCTIONS)

    # The SDK parses the same stream.
    stream = client(proxy).responses.create(
        model="fake-model", input="tell me", instructions=APP_INSTRUCTIONS, stream=True, user="alice@example.com"
    )
    seen = list(stream)
    assert seen[-1].type == "response.completed"
    assert seen[-1].response.instructions == APP_INSTRUCTIONS
    assert seen[-1].response.output_text == "fake answer to: tell me"
    assert "".join(e.delta for e in seen if e.type == "response.output_text.delta") == "fake answer to: tell me"


def test_a_stored_response_replayed_as_a_stream_shows_the_apps_own_instructions(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    """GET /v1/responses/{id}?stream=true replays the events: the persona is restored out of them
    as out of the stream that created it."""
    give_persona(proxy, "replay-user")
    created = client(proxy).responses.create(
        model="fake-model", input="replay me", instructions=APP_INSTRUCTIONS, user="replay-user"
    )
    assert_persona_once_after(sent_bodies(fake_upstream)[-1]["instructions"], APP_INSTRUCTIONS)
    replayed = list(client(proxy).responses.retrieve(created.id, stream=True))
    asked = fake_upstream.requests[-1]
    assert (asked.method, asked.path, asked.query) == ("GET", f"/v1/responses/{created.id}", "stream=true")
    assert (replayed[0].type, replayed[-1].type) == ("response.created", "response.completed")
    assert [e.sequence_number for e in replayed] == list(range(len(replayed)))
    for event in replayed:
        assert PERSONA_MARK not in event.model_dump_json()
        if event.type in ("response.created", "response.in_progress", "response.completed"):
            assert event.response.instructions == APP_INSTRUCTIONS
    assert replayed[-1].response.output_text == "fake answer to: replay me"  # type: ignore[union-attr]
    assert "".join(e.delta for e in replayed if e.type == "response.output_text.delta") == "fake answer to: replay me"


def test_sdk_stream_helper(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "carol")
    with client(proxy).responses.stream(model="fake-model", input="stream it", instructions="Be brief.", user="carol") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "fake answer to: stream it"
    assert final.instructions == "Be brief."
    assert_persona_once_after(sent_bodies(fake_upstream)[-1]["instructions"], "Be brief.")


def test_tools_and_function_call_round_trip(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "dave")
    tools: Any = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "strict": True,
        }
    ]
    api = client(proxy)
    first = api.responses.create(model="fake-model", input="weather in Paris?", tools=tools, user="dave")
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    second = api.responses.create(
        model="fake-model",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=tools,
        user="dave",
    )
    assert second.output_text.startswith("fake answer")
    bodies = sent_bodies(fake_upstream)
    assert bodies[-1]["previous_response_id"] == first.id
    for body in bodies[-2:]:
        assert_persona_once_after(body["instructions"], None)
        assert PERSONA_MARK not in json.dumps(body["input"])


class Weather(BaseModel):
    city: str
    celsius: int


def test_parse_with_a_pydantic_model(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "erin")
    parsed = client(proxy).responses.parse(
        model="fake-model", input="weather?", instructions="JSON only.", text_format=Weather, user="erin"
    )
    assert isinstance(parsed.output_parsed, Weather)
    assert parsed.instructions == "JSON only."
    sent = sent_bodies(fake_upstream)[-1]
    assert sent["text"]["format"]["type"] == "json_schema"
    assert_persona_once_after(sent["instructions"], "JSON only.")


def test_previous_response_chain_gets_the_persona_once_per_turn(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    give_persona(proxy, "frank")
    api = client(proxy)
    first = api.responses.create(model="fake-model", input="turn one", instructions="Sys.", user="frank")
    second = api.responses.create(
        model="fake-model", input="turn two", instructions="Sys.", previous_response_id=first.id, user="frank"
    )
    assert second.instructions == "Sys."
    for body in sent_bodies(fake_upstream):
        assert_persona_once_after(body["instructions"], "Sys.")
    # What the upstream keeps as input items holds no persona.
    items = api.responses.input_items.list(second.id)
    assert items.data and PERSONA_MARK not in items.model_dump_json()


def test_retrieve_only_by_the_owner_tenant(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "gina")
    created = client(proxy).responses.create(model="fake-model", input="keep me", instructions="Own.", user="gina")
    again = client(proxy).responses.retrieve(created.id)
    assert again.id == created.id and again.instructions == "Own."  # the persona stays hidden
    assert PERSONA_MARK in fake_upstream.app.stored_responses.get(created.id)["instructions"]  # type: ignore[index]

    other = client(proxy, APP_KEY_B)
    for call in (
        lambda: other.responses.retrieve(created.id),
        lambda: other.responses.input_items.list(created.id),
        lambda: other.responses.cancel(created.id),
        lambda: other.responses.delete(created.id),
        lambda: other.responses.create(model="fake-model", input="x", previous_response_id=created.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert fake_upstream.app.stored_responses.get(created.id) is not None

    client(proxy).responses.delete(created.id)
    assert fake_upstream.app.stored_responses.get(created.id) is None
    with pytest.raises(openai.NotFoundError):
        client(proxy).responses.retrieve(created.id)


def test_store_false_and_mode_off(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "hal")
    client(proxy).responses.create(model="fake-model", input="x", store=False, user="hal")
    assert_persona_once_after(sent_bodies(fake_upstream)[-1]["instructions"], None)
    raw = client(proxy).responses.with_raw_response.create(
        model="fake-model", input="x", instructions="Mine.", user="hal", extra_headers={"X-Persona-Mode": "off"}
    )
    assert sent_bodies(fake_upstream)[-1]["instructions"] == "Mine."
    assert raw.headers["x-persona-version"] == "none"


def test_rerank_mode_is_refused_clearly(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(proxy).responses.create(model="fake-model", input="x", extra_headers={"X-Persona-Mode": "rerank"})
    assert "chat/completions" in err.value.message
    assert sent_bodies(fake_upstream) == []


def test_mid_stream_failure_is_a_responses_error_event(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "ivy")
    fake_upstream.script(Reply(fail_mid_stream=True))
    with httpx.stream(
        "POST",
        f"{proxy.v1}/responses",
        json={"model": "fake-model", "input": "x", "stream": True, "user": "ivy"},
        headers={"Authorization": f"Bearer {APP_KEY_A}"},
    ) as answer:
        text = answer.read().decode()
    last = [e for e in text.split("\n\n") if e.strip()][-1]
    name, data = last.split("\n", 1)
    assert name == "event: error"
    error = json.loads(data.removeprefix("data: "))
    assert error["type"] == "error" and error["code"] and error["message"]
    assert PERSONA_MARK not in text


def test_upstream_rate_limit_headers_reach_the_app(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(*[Reply(status=429, headers={"retry-after": "0", "retry-after-ms": "5"})] * 3)
    with pytest.raises(openai.RateLimitError) as err:
        client(proxy).responses.create(model="fake-model", input="x")
    assert err.value.response.headers["retry-after-ms"] == "5"
    assert err.value.response.headers["x-request-id"].startswith("req_")


def test_provider_prefixed_model_goes_through_litellms_bridge(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    give_persona(proxy, "kim")
    api = client(proxy)
    response = api.responses.create(model="hosted_vllm/fake-model", input="bridge me", instructions="Sys.", user="kim")
    assert response.output_text == "fake answer to: bridge me"
    assert response.instructions == "Sys."
    # litellm's own request upstream (its Responses or chat call) carries the persona once, after "Sys.".
    upstream_body = json.dumps(fake_upstream.requests[-1].body)
    assert upstream_body.count(PERSONA_MARK) == 1 and upstream_body.index("Sys.") < upstream_body.index(PERSONA_MARK)

    events = list(api.responses.create(model="hosted_vllm/fake-model", input="and stream", stream=True, user="kim"))
    assert events[-1].type == "response.completed"
    assert PERSONA_MARK not in json.dumps([e.model_dump() for e in events])
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "fake answer to: and stream"


@pytest.mark.parametrize(
    ("model", "wire_path"),
    [
        # litellm's OpenAI-compatible provider: the Responses call bridged to chat completions
        ("deepseek/fake-model", "/chat/completions"),
        # Anthropic: the Responses call translated to the Messages API
        ("anthropic/claude-fake", "/messages"),
    ],
)
def test_other_provider_prefixes_go_through_litellms_bridge(
    proxy: RunningProxy, fake_upstream: FakeUpstream, model: str, wire_path: str
) -> None:
    give_persona(proxy, "lee")
    api = client(proxy)
    response = api.responses.create(model=model, input="bridge me", instructions="Sys.", user="lee")
    assert response.output_text == "fake answer to: bridge me"
    assert response.instructions == "Sys."
    assert PERSONA_MARK not in response.model_dump_json()
    sent = fake_upstream.requests[-1]
    assert sent.path.endswith(wire_path), sent.path
    upstream_body = json.dumps(sent.body)
    assert upstream_body.count(PERSONA_MARK) == 1
    assert upstream_body.index("Sys.") < upstream_body.index(PERSONA_MARK)

    events = list(api.responses.create(model=model, input="and stream", stream=True, user="lee"))
    assert fake_upstream.requests[-1].path.endswith(wire_path)
    assert events[-1].type == "response.completed"
    assert PERSONA_MARK not in json.dumps([e.model_dump() for e in events])
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "fake answer to: and stream"
