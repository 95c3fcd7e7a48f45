"""The pure placement functions: persona into `instructions` / `system`, the app's value restored in
a Response and in a stream cut at any byte."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.errors import ValidationFailed
from middleware.personalize.placement import (
    ResponsesStreamRestorer,
    app_instructions,
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


def _stream(newline: str) -> bytes:
    combined = f"App.\n\n{BLOCK}"
    events = [
        ("response.created", {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_9", "instructions": combined}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 1, "delta": "hi"}),
        ("response.completed", {"type": "response.completed", "sequence_number": 2, "response": {"id": "resp_9", "instructions": combined}}),
    ]
    nl = newline
    return "".join(f"event: {name}{nl}data: {json.dumps(data, separators=(',', ':'))}{nl}{nl}" for name, data in events).encode()


@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6), crlf=st.booleans())
def test_stream_restored_whatever_the_chunking(cuts: list[int], crlf: bool) -> None:
    raw = _stream("\r\n" if crlf else "\n")
    points = sorted({min(c, len(raw)) for c in cuts})
    chunks = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    for sent in (None, f"App.\n\n{BLOCK}"):  # parse-and-rewrite, and the in-place fast path
        restorer = ResponsesStreamRestorer(len("App."), sent=sent)
        out = b"".join(restorer.feed(c) for c in chunks) + restorer.flush()
        assert b"user_preferences" not in out
        assert out.count(b'"instructions":"App."') == 2
        assert restorer.response_id == "resp_9" and restorer.last_sequence == 2
    # The delta event is relayed byte for byte.
    delta = raw.split(b"event: response.output_text.delta")[1].split(b"event: ")[0]
    assert delta in out
