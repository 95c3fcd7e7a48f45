"""The pure placement functions: persona into `instructions` / `system`, the app's value restored in
a Response and in a stream cut at any byte."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.errors import ValidationFailed
from middleware.personalize.placement import (
    InstructionsSwap,
    ResponsesStreamRestorer,
    app_instructions,
    response_id_of,
    restore_response_bytes,
    with_instructions,
    with_system,
)

BLOCK = "<user_preferences>\nP\n</user_preferences>"


def test_instructions_placement_and_restore() -> None:
    assert with_instructions(None, BLOCK) == (BLOCK, None)
    assert with_instructions("", BLOCK) == (BLOCK, 0)
    combined, n = with_instructions("App.", BLOCK)
    assert combined == f"App.\n\n{BLOCK}" and app_instructions(combined, n) == "App."
    assert app_instructions(BLOCK, None) is None
    with pytest.raises(ValidationFailed):
        with_instructions(["not", "a string"], BLOCK)
    data, rid = restore_response_bytes(json.dumps({"id": "resp_1", "instructions": combined}).encode(), n)
    assert json.loads(data) == {"id": "resp_1", "instructions": "App."} and rid == "resp_1"


def test_system_placement_keeps_the_app_blocks() -> None:
    cached = [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}]
    assert with_system("S", BLOCK) == [{"type": "text", "text": "S"}, {"type": "text", "text": BLOCK}]
    assert with_system(cached, BLOCK) == [*cached, {"type": "text", "text": BLOCK}]
    assert with_system(None, BLOCK) == [{"type": "text", "text": BLOCK}]
    with pytest.raises(ValidationFailed):
        with_system(42, BLOCK)


def _stream(newline: str, combined: str) -> bytes:
    """Events as Python's json.dumps writes them: compact, every non-ASCII character escaped."""
    events = [
        (
            "response.created",
            {
                "type": "response.created",
                "sequence_number": 0,
                "response": {"id": "resp_9", "instructions": combined},
            },
        ),
        (
            "response.output_text.delta",
            {"type": "response.output_text.delta", "sequence_number": 1, "delta": "hi"},
        ),
        (
            "response.completed",
            {
                "type": "response.completed",
                "sequence_number": 2,
                "response": {"id": "resp_9", "instructions": combined},
            },
        ),
    ]
    nl = newline
    return "".join(
        f"event: {name}{nl}data: {json.dumps(data, separators=(',', ':'))}{nl}{nl}" for name, data in events
    ).encode()


@given(
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
    crlf=st.booleans(),
    accented=st.booleans(),
)
def test_stream_restored_whatever_the_chunking(cuts: list[int], crlf: bool, accented: bool) -> None:
    # ASCII: the swap finds the sent text; accented: escaped otherwise than orjson writes it, so the
    # events are parsed and rewritten
    combined = f"App.\n\n<user_preferences>\n{'Préfère' if accented else 'P'}\n</user_preferences>"
    raw = _stream("\r\n" if crlf else "\n", combined)
    points = sorted({min(c, len(raw)) for c in cuts})
    chunks = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    swap = InstructionsSwap(combined, len("App."))
    for known in (None, swap):  # parse-and-rewrite, and the in-place swap
        restorer = ResponsesStreamRestorer(len("App."), swap=known)
        out = b"".join(restorer.feed(c) for c in chunks) + restorer.flush()
        assert b"user_preferences" not in out
        assert out.count(b'"instructions":"App."') == 2
        assert restorer.response_id == "resp_9" and restorer.last_sequence == 2
    # The delta event is relayed byte for byte.
    delta = raw.split(b"event: response.output_text.delta")[1].split(b"event: ")[0]
    assert delta in out


# --- a whole Response object: the sent instructions swapped in place, the top-level id -----------

APP = "App."
SENT = f"{APP}\n\n{BLOCK}"
ACCENTED = f"{APP}\n\n<user_preferences>\nPréfère le café\n</user_preferences>"


def _response(instructions: str | None, *, persona: str = SENT) -> dict[str, object]:
    """A Response object whose output items, nested objects and metadata carry ids of their own."""
    return {
        "id": "resp_top",
        "object": "response",
        "instructions": instructions,
        "output": [
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"},
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "content": [{"type": "output_text", "text": 'a "quoted" id', "annotations": []}],
            },
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"required": ["instructions"]}}],
        "metadata": {"id": "meta_id", "echo": persona},
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
    }


def _encoded(response: dict[str, object], order: list[str], indent: int | None, ascii_only: bool) -> bytes:
    ordered = {key: response[key] for key in order}
    separators = (",", ":") if indent is None else None
    return json.dumps(ordered, indent=indent, ensure_ascii=ascii_only, separators=separators).encode()


@given(
    order=st.permutations(list(_response(None))),
    indent=st.sampled_from([None, 2]),
    ascii_only=st.booleans(),
    persona=st.sampled_from([SENT, ACCENTED]),
)
def test_whole_response_restored_and_its_own_id_found_in_any_key_order_and_encoding(
    order: list[str], indent: int | None, ascii_only: bool, persona: str
) -> None:
    n = len(APP)
    data = _encoded(_response(persona, persona=persona), order, indent, ascii_only)
    restored, response_id = restore_response_bytes(data, n, InstructionsSwap(persona, n))
    assert response_id == "resp_top" == response_id_of(data)
    assert json.loads(restored) == _response(APP, persona=persona)  # metadata's copy untouched
    if ascii_only and persona == ACCENTED:
        assert b"\\u00e9" in data  # escaped otherwise than orjson writes it: parsed and rewritten
    else:  # swapped: every other byte as the upstream wrote it
        own = json.dumps(APP, ensure_ascii=ascii_only).encode()
        sent = json.dumps(persona, ensure_ascii=ascii_only).encode()
        key = b'"instructions":' if indent is None else b'"instructions": '
        assert restored == data.replace(key + sent, key + own)


def test_swap_takes_only_instructions_members_holding_the_sent_text() -> None:
    swap = InstructionsSwap(SENT, len(APP))
    sent, own = json.dumps(SENT).encode(), json.dumps(APP).encode()
    assert swap.apply(b'{"instructions":' + sent + b"}") == b'{"instructions":' + own + b"}"
    assert swap.apply(b'{"instructions" :\n ' + sent + b"}") == b'{"instructions" :\n ' + own + b"}"
    assert (
        swap.apply(b'{"a":1,\n  "instructions":' + sent + b"}") == b'{"a":1,\n  "instructions":' + own + b"}"
    )
    for elsewhere in (
        b'{"echo":' + sent + b"}",  # another member's value
        b'{"note\\"instructions":' + sent + b"}",  # a key ending in an escaped quote and the word
        b'{"list":["instructions",' + sent + b"]}",  # an array element
        b'{"instructions":"other"}',  # the upstream holds other instructions
        b'{"instructions":' + json.dumps(SENT + " ").encode() + b"}",  # longer than what was sent
    ):
        assert swap.apply(elsewhere) is None
    nothing = InstructionsSwap(BLOCK, None)  # the app sent no instructions: null back
    assert nothing.apply(b'{"instructions":' + json.dumps(BLOCK).encode() + b"}") == b'{"instructions":null}'


def test_response_id_read_off_the_front_or_parsed() -> None:
    assert response_id_of(b'{"id":"resp_1","output":[]}') == "resp_1"
    assert response_id_of(b' \n{\n  "id" : "resp_1"}') == "resp_1"
    # an output item's id comes first in the bytes, the response's last: parsed
    assert response_id_of(b'{"output":[{"id":"msg_1"}],"id":"resp_2"}') == "resp_2"
    assert response_id_of(b'{"id":"resp_\\u0033"}') == "resp_3"  # an escape: parsed
    assert response_id_of(b'{"id":null}') is None
    assert response_id_of(b'{"output":[{"id":"msg_1"}]}') is None
    assert response_id_of(b'[{"id":"resp_1"}]') is None
    assert response_id_of(b"not json") is None
    # a restore that falls back to parsing reads the same id
    assert restore_response_bytes(b'{"output":[{"id":"msg_1"}],"id":"resp_2"}', None) == (
        b'{"output":[{"id":"msg_1"}],"id":"resp_2"}',
        "resp_2",
    )


@given(
    event_order=st.permutations(["type", "sequence_number", "response"]),
    order=st.permutations(list(_response(None))),
    spaced=st.booleans(),
)
def test_stream_response_id_is_the_responses_own_in_any_key_order(
    event_order: list[str], order: list[str], spaced: bool
) -> None:
    n = len(APP)
    separators = (", ", ": ") if spaced else (",", ":")
    response = {key: _response(SENT)[key] for key in order}
    events = [
        {"type": "response.created", "sequence_number": 0, "response": response},
        {"type": "response.output_item.added", "sequence_number": 1, "item": {"id": "msg_1"}},
        {"type": "response.completed", "sequence_number": 2, "response": response},
    ]
    raw = b"".join(
        b"event: "
        + str(event["type"]).encode()
        + b"\ndata: "
        + json.dumps({k: event[k] for k in event_order if k in event} | event, separators=separators).encode()
        + b"\n\n"
        for event in events
    )
    key = b'"instructions": ' if spaced else b'"instructions":'
    for restore, swap in ((True, InstructionsSwap(SENT, n)), (True, None), (False, None)):
        restorer = ResponsesStreamRestorer(n, restore=restore, swap=swap)
        out = restorer.feed(raw) + restorer.flush()
        assert restorer.response_id == "resp_top"
        if not restore:
            assert out == raw
        elif swap is not None:  # swapped in place, every other byte as it came
            assert out == raw.replace(key + json.dumps(SENT).encode(), key + json.dumps(APP).encode())
        else:
            shown = [json.loads(line[5:]) for line in out.split(b"\n") if line.startswith(b"data:")]
            assert [e.get("response") for e in shown] == [
                _response(APP, persona=SENT),
                None,
                _response(APP, persona=SENT),
            ]
