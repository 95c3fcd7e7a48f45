"""CPU per answer of what the Responses API route does to a whole Response object that chat completions
does not: the app's instructions restored and the response id found for its owner record
(`openai_responses.Created.whole`), in one process, configurations alternating.

The Response object is the fake upstream's (a message output item with its own id, usage, the tools
echoed), about 2 KB, its `instructions` the app's text and the persona block rendered from the
template with two exemplars, as in benchmarks/proxy_overhead.py. Rows: the sent text swapped in place
(the upstream encoded it as orjson does) against the whole object parsed and written again (what an
upstream that escapes it otherwise gets, and what every answer got before the swap); the id of a
response without persona read off its front against parsed; the owner record queued alone. The owner
record's writes go to a stub (its Redis round trip, behind the answer, is not counted). The same
response streamed (the fake's events, one chunk each) through the stream restorer, with the swap and
parsing every event that carries `instructions`.

CPU time of the process (`time.process_time`), the median of the runs. No server, no sockets, no Redis.

    .venv/bin/python benchmarks/responses_restore.py [--runs 7] [--calls 20000]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package and tests

from middleware.api.openai_responses import Created
from middleware.models import Persona
from middleware.personalize.block import render_persona_block
from middleware.personalize.placement import (
    InstructionsSwap,
    ResponsesStreamRestorer,
    response_id_of,
    with_instructions,
)
from middleware.services import Services
from middleware.store.response_owners import ResponseOwner
from tests.support.fake_upstream.models import Reply
from tests.support.fake_upstream.responses_api import build_response, stream_events

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h
from proxy_overhead import EXEMPLAR as BENCH_EXEMPLAR
from proxy_overhead import PERSONA

APP = "You are a helpful assistant for the ACME store."
EXEMPLAR = {**BENCH_EXEMPLAR, "user_id": "bench-user"}

ANSWER = (
    "For a beginner, a neutral, well-cushioned daily trainer is the safest start: Brooks Ghost 16 "
    "(smooth, forgiving), ASICS Novablast 4 (bouncy, light) or Saucony Ride 17 (stable, durable). "
    "Get fitted in the afternoon and keep a thumb's width at the toe."
)


class Owners:
    """The owner records' stub: kept, never written."""

    def __init__(self) -> None:
        self.recorded: list[tuple[str, ResponseOwner]] = []

    def record_later(self, response_id: str, owner: ResponseOwner) -> None:
        self.recorded.append((response_id, owner))
        if len(self.recorded) > 1000:
            self.recorded.clear()


def sent_instructions() -> tuple[str, int | None]:
    persona = Persona.model_validate(
        {"version": 1, "version_id": "v1", "text": PERSONA, "exemplars": [EXEMPLAR] * 2, "created_at": "now"}
    )
    block = render_persona_block(persona, max_chars=2000, exemplars_max=3, exemplar_max_chars=1200)
    return with_instructions(APP, block)


def restored_stream(events: list[bytes], app_chars: int | None, swap: InstructionsSwap | None) -> list[bytes]:
    """The events through the stream restorer, one chunk each (as the upstream sends them)."""
    restorer = ResponsesStreamRestorer(app_chars, swap=swap)
    out = [restorer.feed(event) for event in events]
    out.append(restorer.flush())
    return out


def cpu_us(call: Callable[[], object], calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls * 1e6


def main(runs: int, calls: int) -> None:
    sent, app_chars = sent_instructions()
    body = {"model": "fake-model", "instructions": sent, "input": "Which running shoes for a beginner?"}
    data = orjson.dumps(build_response(body, Reply(content=ANSWER), []))
    plain = orjson.dumps(build_response({**body, "instructions": APP}, Reply(content=ANSWER), []))
    response_id = orjson.loads(data)["id"]
    owners = Owners()
    services = cast(Services, type("S", (), {"response_owners": owners})())
    personalized = ResponseOwner("bench", True, app_chars)
    swapped = Created(services, personalized, True, InstructionsSwap(sent, app_chars))
    parsed = Created(services, personalized, True)  # no swap known: parse and rewrite
    not_personalized = Created(services, ResponseOwner("bench", False, None), True)
    for created in (swapped, parsed):
        restored = orjson.loads(created.whole(data))
        assert restored["instructions"] == APP and owners.recorded[-1][0] == response_id
    cases: dict[str, Callable[[], object]] = {
        "restore + id + record, swap": lambda: swapped.whole(data),
        "restore + id + record, parse": lambda: parsed.whole(data),
        "id + record, no persona": lambda: not_personalized.whole(plain),
        "id, read off the front": lambda: response_id_of(plain),
        "id, parsed": lambda: orjson.loads(plain).get("id"),
        "record alone": lambda: owners.record_later(response_id, personalized),
    }
    events = stream_events(orjson.loads(data))
    for swap in (swapped.swap, None):
        assert b"user_preferences" not in b"".join(restored_stream(events, app_chars, swap))
    known = swapped.swap
    cases[f"stream of {len(events)} events, swap"] = lambda: restored_stream(events, app_chars, known)
    cases[f"stream of {len(events)} events, parse"] = lambda: restored_stream(events, app_chars, None)
    samples: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(runs):
        for label, call in cases.items():
            samples[label].append(cpu_us(call, calls))
    print(f"Response object {len(data)} bytes ({len(sent)} characters of instructions sent)")
    print(f"CPU µs per answer, median of {runs} runs x {calls} calls, alternating")
    for label, values in samples.items():
        print(f"{label:<32}{statistics.median(values):>8.2f}   ({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    args = h.in_process_args(__doc__, calls=20000)
    main(args.runs, args.calls)
