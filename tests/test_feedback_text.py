"""The answer text a feedback record keeps from a stream (feedback/answers.py `answer_text`): the usual
event shapes of the three APIs are read without parsing each event, and every stream, usual or not,
reads the same text as parsing each of its events (the unusual ones also the text written beside them).
And what a streamed answer keeps for it."""

from __future__ import annotations

import json
import random
from contextlib import closing
from typing import Any

import httpx
import orjson
import redis

from middleware.api.chatlike import StreamedAnswer
from middleware.feedback import answers
from middleware.feedback.answers import RESPONSE_ID_HEADER, KeptChunks, answer_text
from middleware.store import keys
from tests.support.fake_upstream import FakeUpstream
from tests.support.fake_upstream.models import Reply
from tests.support.fake_upstream.other_apis import message_events, message_json
from tests.support.fake_upstream.responses import plan_reply
from tests.support.fake_upstream.responses_api import build_response
from tests.support.fake_upstream.responses_api import stream_events as responses_events
from tests.support.fake_upstream.sse import stream_events as chat_events
from tests.support.proxy import APP_KEY_A, proxy_settings, start_proxy
from tests.support.waiting import wait_until

TEXT = 'Line one,\n"quoted" \\ back\tslash, é, 日本, emoji 😀 and \u2028 done.'


def parsed(body: bytes) -> str:
    """The text of a stream read the plain way: every `data:` line parsed."""
    text = []
    for line in body.splitlines():
        payload = line[5:].strip() if line.startswith(b"data:") else b""
        if payload.startswith(b"{"):
            try:
                text.append(answers._event_text(orjson.loads(payload)))
            except orjson.JSONDecodeError:
                continue
    return "".join(text)


def chat_stream(text: str, **body: Any) -> bytes:
    request = {"model": "fake-model", "messages": [{"role": "user", "content": "q"}], "stream": True, **body}
    return b"".join(chat_events(request, plan_reply(request, Reply(content=text)), "chatcmpl-1", 1))


def responses_stream(text: str) -> bytes:
    request = {"model": "fake-model", "input": "q", "stream": True, "instructions": "Be brief. " * 50}
    return b"".join(responses_events(build_response(request, Reply(content=text), [])))


def messages_stream(text: str) -> bytes:
    message = message_json({"messages": [{"role": "user", "content": "q"}]})
    message["content"][0]["text"] = text
    return b"".join(message_events(message))


def test_the_usual_streams_are_read_whole_without_parsing_each_event() -> None:
    streams = {
        "chat": chat_stream(TEXT),
        "chat with usage": chat_stream(TEXT, stream_options={"include_usage": True}),
        "responses": responses_stream(TEXT),
        "messages": messages_stream(TEXT),
    }
    for name, body in streams.items():
        assert answer_text(body) == TEXT == parsed(body), name
        assert answers._common_stream_text(body) == TEXT, name  # the expressions read it


def test_a_stream_cut_anywhere_reads_what_its_events_say() -> None:
    for body in (chat_stream("one two three"), responses_stream("one two"), messages_stream("one two")):
        for end in range(len(body) + 1):
            assert answer_text(body[:end]) == parsed(body[:end]), body[:end]


# (stream, the text its events say)
UNUSUAL: list[tuple[bytes, str]] = [
    # keys in another order, spaces, choices' `message`, other deltas: parsed
    (b'data: {"choices":[{"delta":{"content":"a"},"index":0}],"id":"x"}\n\ndata: [DONE]\n\n', 'a'),
    (b'data: {"id": "x", "choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n', 'a'),
    (b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"},"message":{"content":"b"}}]}\n\n', 'b'),
    (
        b'data: {"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[]}}]}\n\n'
        b'data: {"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":0}],"content":"t"}}]}\n\n',
        't',
    ),
    (b'data: {"id":"x","choices":[{"index":0,"delta":{"content":[{"type":"text","text":"parts"}]}}]}\n\n', 'parts'),
    # a choice after the first, an event without choices, a line that is no JSON, [DONE] midway
    (b'data: {"id":"x","choices":[{"index":0,"delta":{}},{"index":1,"delta":{"content":"no"}}]}\n\n', ''),
    (b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"}}]}\n\ndata: {"output_text":"b"}\n\n', 'ab'),
    (b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"}}]}\n\ndata: {broken\n\n: ping\n\n', 'a'),
    (
        b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"}}]}\n\ndata: [DONE]\n\ndata: {"id":"y",'
        b'"choices":[{"index":0,"delta":{"content":"b"}}]}\n\n',
        'ab',
    ),
    # line ends: CRLF, CR alone; text that looks like an event
    (b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"}}]}\r\n\r\ndata: [DONE]\r\n\r\n', 'a'),
    (
        b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"}}]}\r\rdata: {"id":"x","choices":[{"inde'
        b'x":0,"delta":{"content":"b"}}]}\r\r',
        'ab',
    ),
    (b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"data: {\\"choices\\":[{"}}]}\n\n', 'data: {"choices":[{'),
    # bad escapes, a lone surrogate, bytes that are not UTF-8
    (b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"\\x"}}]}\n\n', ''),
    (b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}\n\n', ''),
    (b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"\xff"}}]}\n\n', ''),
    # typed events: an unknown type, a delta of an unusual shape, no type first, two kinds of deltas
    (b'data: {"type":"response.output_text.delta","delta":"a"}\n\ndata: {"type":"error","message":"x"}\n\n', 'a'),
    (b'data: {"type":"response.output_text.delta","extra":{"a":1},"delta":"a"}\n\n', 'a'),
    (b'data: {"delta":"a","type":"response.output_text.delta"}\n\n', 'a'),
    (
        b'data: {"type":"response.output_text.delta","delta":"a"}\n\n'
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"b"}}\n\n',
        'ab',
    ),
    (b'data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}\n\n', ''),
    # response.completed repeats the deltas' text in its output: not read again
    (b'data: {"type":"response.completed","response":{"output":[{"content":[{"text":"c"}]}]}}\n\n', ''),
]


def test_unusual_streams_read_what_their_events_say() -> None:
    for body, text in UNUSUAL:
        assert answer_text(body) == text == parsed(body), body


def test_generated_streams_read_what_their_events_say() -> None:
    rnd = random.Random(7)
    words = ["word", " the", "é", "", 'a"q', "new\nline", "\\", "{x}", '"delta":{"content":"', "data: x"]

    def text() -> str:
        return "".join(rnd.choice(words) for _ in range(rnd.randint(0, 3)))

    def chat(odd: bool) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": text()}
        if odd:
            delta = rnd.choice([{}, {"role": "assistant"}, {"content": None}, {"tool_calls": [{"index": 0}]}])
        choices = [{"index": rnd.choice([0, 1]), "delta": delta, "logprobs": None, "finish_reason": None}]
        if odd and rnd.random() < 0.2:
            choices = []
        return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices}

    def typed(_: bool) -> dict[str, Any]:
        kind = rnd.choice(["response.output_text.delta"] * 3 + ["response.created", "response.completed"])
        if kind == "response.output_text.delta":
            return {"type": kind, "sequence_number": 1, "item_id": "m", "output_index": 0, "delta": text()}
        return {"type": kind, "response": {"output": [{"content": [{"text": text()}]}]}}

    def encoded(doc: dict[str, Any], odd: bool) -> bytes:
        return json.dumps(doc).encode() if odd and rnd.random() < 0.3 else orjson.dumps(doc)

    read_whole = 0
    for _ in range(1500):
        make, odd = rnd.choice([chat, typed]), rnd.random() < 0.3
        events = [make(odd and rnd.random() < 0.5) for _ in range(rnd.randint(1, 9))]
        body = b"".join(b"data: " + encoded(event, odd) + b"\n\n" for event in events)
        if make is chat:
            body += b"data: [DONE]\n\n"
        assert answer_text(body) == parsed(body), body
        read_whole += answers._common_stream_text(body) is not None
    assert read_whole > 750  # most are of the usual shapes


async def test_a_streamed_answer_keeps_the_chunks_it_sent_while_it_has_room() -> None:
    chunks = [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10]

    async def body() -> Any:
        for chunk in chunks:
            yield chunk

    kept = KeptChunks(room=15)
    sent: list[bytes] = []

    async def receive() -> Any:
        raise AssertionError("the answer is sent without waiting for the client")

    async def send(message: Any) -> None:
        sent.append(message.get("body", b""))

    await StreamedAnswer(body(), media_type="text/event-stream", kept=kept)({"type": "http"}, receive, send)
    assert b"".join(sent) == b"".join(chunks)  # the answer whole
    assert kept.chunks == chunks[:2]  # kept until the room was used up


def test_a_stream_whose_client_went_away_keeps_the_text_it_was_sent(
    redis_url: str, fake_upstream: FakeUpstream
) -> None:
    whole = " ".join(f"w{i}" for i in range(40))
    fake_upstream.script(Reply(content=whole, chunk_delay=0.05))
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "q"}], "stream": True}
    headers = {"Authorization": f"Bearer {APP_KEY_A}", "X-Persona-User": "alice"}
    with start_proxy(proxy_settings(redis_url, fake_upstream, feedback_keep_text=True)) as proxy:
        with httpx.stream("POST", f"{proxy.v1}/chat/completions", json=body, headers=headers) as response:
            response_id = response.headers[RESPONSE_ID_HEADER]
            chunks = response.iter_bytes()
            next(chunks)
            next(chunks)
        with closing(redis.Redis.from_url(redis_url)) as store:
            key = keys.feedback("tenant-a", "alice", response_id)
            assert wait_until(
                lambda: bool(store.hexists(key, "record")), timeout=5
            )  # written behind the answer
            raw = store.hget(key, "record")
    kept = orjson.loads(raw)["answer"]  # type: ignore[arg-type]
    assert kept.startswith("w0 ") and whole.startswith(kept) and len(kept) < len(whole)
