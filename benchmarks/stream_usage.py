"""Time per streamed answer of counting its tokens (`quotas.usage.StreamUsage`, what a metered call's
stream goes through), in one process: a chat completions stream with its usage chunk and a Responses
API stream (its `instructions` as the app sent them, as the proxy counts it after restoring them), fed
event by event. The baseline, in the same run: every event's `data:` line parsed and its usage read.

    .venv/bin/python benchmarks/stream_usage.py [--runs 7] [--calls 5000]
"""

from __future__ import annotations

import statistics
import sys
import timeit
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package and tests

import _harness as h

from middleware.quotas.usage import StreamUsage, tokens_used
from tests.support.fake_upstream.models import Reply
from tests.support.fake_upstream.responses import plan_reply
from tests.support.fake_upstream.responses_api import build_response
from tests.support.fake_upstream.responses_api import stream_events as responses_events
from tests.support.fake_upstream.sse import stream_events as chat_events

TEXT = " ".join(f"word{i % 7}" for i in range(40))
PROMPT = [{"role": "user", "content": "Tell me a story about a fox, please."}]


def chat_stream() -> list[bytes]:
    body = {"model": "fake-model", "messages": PROMPT, "stream": True, "stream_options": {"include_usage": True}}
    return chat_events(body, plan_reply(body, Reply(content=TEXT)), "chatcmpl-bench", 1_700_000_000)


def responses_stream() -> list[bytes]:
    body = {"model": "fake-model", "input": PROMPT, "stream": True, "instructions": "You are helpful."}
    return responses_events(build_response(body, Reply(content=TEXT), []))


def counted(events: list[bytes]) -> int:
    usage = StreamUsage()
    for event in events:
        usage.feed(event)
    return usage.total()


def parsed(events: list[bytes]) -> int:
    """Every event parsed: the usage at the top, of the response (Responses) or of the message."""
    fields: dict[str, int] = {}
    for event in events:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            try:
                data = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(data, dict):
                continue
            usage = data.get("usage")
            for outer in ("response", "message"):
                if usage is None and isinstance(data.get(outer), dict):
                    usage = data[outer].get("usage")
            if isinstance(usage, Mapping):
                for name, value in usage.items():
                    if isinstance(value, int) and value > fields.get(name, 0):
                        fields[name] = value
    return tokens_used(fields)


def main(runs: int, calls: int) -> None:
    print(f"µs per streamed answer, median of {runs} runs x {calls} answers (timeit, alternating)")
    print(f"{'stream':<11}{'events':>7}{'bytes':>7}{'every event parsed':>20}{'StreamUsage':>13}{'ratio':>7}")
    for name, events in (("chat", chat_stream()), ("responses", responses_stream())):
        assert counted(events) == parsed(events) > 0, name
        times: dict[str, list[float]] = {"parsed": [], "counted": []}
        for _ in range(runs):  # alternating, so a busy moment weighs on both
            for label, count in (("parsed", parsed), ("counted", counted)):
                times[label].append(timeit.timeit(partial(count, events), number=calls) / calls * 1e6)
        base, ours = statistics.median(times["parsed"]), statistics.median(times["counted"])
        size = sum(len(e) for e in events)
        print(f"{name:<11}{len(events):>7}{size:>7}{base:>20.1f}{ours:>13.1f}{ours / base:>7.2f}")


if __name__ == "__main__":
    args = h.in_process_args(__doc__, calls=5000)
    main(args.runs, args.calls)
