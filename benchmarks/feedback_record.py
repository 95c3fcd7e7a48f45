"""CPU per streamed answer of its feedback record, in one process: a chat completions stream of 40
chunks and a Responses API stream of 40 deltas (with the persona in `instructions`) sent through
`chatlike.StreamedAnswer` to a send that drops them, then the record built as the flush behind the
answer builds it. Without a record, with a record without texts, and with the texts kept; and the
answer's text alone, read by `answer_text` against parsing every event.

CPU time of the process (`time.process_time`), the median of the runs, steadier than wall time on a
loaded machine. No server, no sockets, no Redis.

    .venv/bin/python benchmarks/feedback_record.py [--runs 7] [--calls 3000]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import timeit
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from starlette.background import BackgroundTask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package and tests

import _harness as h

from middleware.api.chatlike import StreamedAnswer
from middleware.config import Settings
from middleware.feedback import answers
from middleware.feedback.answers import FeedbackRecorder
from middleware.store.feedback import Record
from tests.support.fake_upstream.models import Reply
from tests.support.fake_upstream.responses import plan_reply
from tests.support.fake_upstream.responses_api import build_response
from tests.support.fake_upstream.responses_api import stream_events as responses_events
from tests.support.fake_upstream.sse import stream_events as chat_events

WORDS = 40
TEXT = " ".join(f"word{i % 7}" for i in range(WORDS))
PROMPT = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Tell me a story about a fox, please."},
]
INSTRUCTIONS = "You are helpful. " + "Persona: likes concise answers, prefers examples. " * 30


def chat_stream() -> list[bytes]:
    body = {"model": "fake-model", "messages": PROMPT, "stream": True}
    return chat_events(body, plan_reply(body, Reply(content=TEXT)), "chatcmpl-bench", 1_700_000_000)


def responses_stream() -> list[bytes]:
    """The fake's events, with one text delta per word (as the API streams it) for its two halves."""
    body = {"model": "fake-model", "input": PROMPT, "stream": True, "instructions": INSTRUCTIONS}
    events = responses_events(build_response(body, Reply(content=TEXT), []))
    deltas = [e for e in events if b'"response.output_text.delta"' in e]
    head, payload = deltas[0].split(b"\ndata: ", 1)
    doc = orjson.loads(payload)
    out: list[bytes] = []
    for event in events:
        if event is deltas[0]:
            for i, word in enumerate(TEXT.split(" ")):
                doc["delta"] = word if i == 0 else " " + word
                out.append(head + b"\ndata: " + orjson.dumps(doc) + b"\n\n")
        elif event not in deltas:
            out.append(event)
    return out


class Writes:
    """Takes the records as the flush behind the answer would, and builds them."""

    def __init__(self) -> None:
        self.takers: list[Callable[[], list[Record]]] = []

    def write_later(self, take: Callable[[], list[Record]]) -> None:
        self.takers.append(take)

    def flush(self) -> list[Record]:
        records = [record for take in self.takers for record in take()]
        self.takers.clear()
        return records


async def one_answer(recorder: FeedbackRecorder | None, writes: Writes, events: list[bytes]) -> list[Record]:
    async def upstream() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    background = kept = None
    if recorder is not None:
        pending = recorder.open(
            "t", "u", persona_version=1, persona_source="user", arm="inject", model="m", prompt=PROMPT
        )
        kept = pending.keep_stream()
        background = BackgroundTask(pending.ended)
    response = StreamedAnswer(upstream(), media_type="text/event-stream", background=background, kept=kept)

    async def receive() -> Any:
        await asyncio.Future()

    async def send(message: Any) -> None:
        pass

    await response({"type": "http"}, receive, send)
    return writes.flush()


async def cpu_us(answer: Callable[[], Awaitable[object]], calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        await answer()
    return (time.process_time() - started) / calls * 1e6


async def main(runs: int, calls: int) -> None:
    configs: dict[str, dict[str, Any] | None] = {
        "no record": None,
        "record, no text": {"feedback_keep_text": False},
        "record, text kept": {"feedback_keep_text": True},
    }
    print(f"CPU µs per streamed answer, median of {runs} runs x {calls} answers, configurations alternating")
    print(f"{'stream':<11}{'configuration':<20}{'µs':>8}{'added':>8}")
    for name, events in (("chat", chat_stream()), ("responses", responses_stream())):
        answers_of: dict[str, Callable[[], Awaitable[object]]] = {}
        for label, settings in configs.items():
            writes = Writes()
            recorder = None if settings is None else FeedbackRecorder(writes, Settings(**settings))  # type: ignore[arg-type]
            if recorder is not None and recorder.keep_text:
                [(*_, record)] = await one_answer(recorder, writes, events)
                assert orjson.loads(record)["answer"] == TEXT
            answers_of[label] = partial(one_answer, recorder, writes, events)
        samples: dict[str, list[float]] = {label: [] for label in configs}
        for _ in range(runs):
            for label, answer in answers_of.items():
                samples[label].append(await cpu_us(answer, calls))
        base = statistics.median(samples["no record"])
        for label, values in samples.items():
            us = statistics.median(values)
            print(f"{name:<11}{label:<20}{us:>8.1f}{us - base:>8.1f}")
        body = b"".join(events)
        for label, read in (
            ("text, parsed", answers._parsed_stream_text),
            ("text, answer_text", answers.answer_text),
        ):
            assert read(body) == TEXT
            us = min(timeit.repeat(lambda r=read, b=body: r(b), number=calls, repeat=runs)) / calls * 1e6
            print(f"{name:<11}{label:<20}{us:>8.1f}")


if __name__ == "__main__":
    args = h.in_process_args(__doc__, calls=3000)
    asyncio.run(main(args.runs, args.calls))
