"""Multi-turn sessions (only the best answer is kept) and the streamed (NDJSON) comparison."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import RunningProxy
from tests.support.proxy import app_client as client
from tests.test_comparisons import (  # distinct_answers: an autouse fixture
    DELAYS,
    INSTRUCTION,
    PROMPT,
    answer_for,
    delayed_responder,
    distinct_answers,  # noqa: F401
    variant_of,
)


def counting_responder() -> Callable[[dict[str, Any]], Reply]:
    calls = {"n": 0}

    def respond(body: dict[str, Any]) -> Reply:
        calls["n"] += 1
        v = variant_of(body)
        return Reply(content=f"turn answer {v[0]} {v[1]} #{len(body['messages'])}")

    return respond


def test_only_the_best_answer_continues_the_session(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.responder = counting_responder()
    with client(proxy) as c:
        first = c.post(
            "/v1/comparisons",
            json={
                "user": "alice",
                "model": "fake-model",
                "messages": [INSTRUCTION, PROMPT],
                "session_id": "s1",
            },
        ).json()
        texts = [x["content"] for x in first["candidates"]]
        judged = c.post(
            f"/v1/comparisons/{first['id']}/judgement", json={"best": 2, "worst": 0, "rationale": "r"}
        )
        assert judged.status_code == 201 and judged.json()["session_appended"] is True
        history = c.get("/v1/sessions/s1", params={"user": "alice"}).json()["messages"]
        assert history == [INSTRUCTION, PROMPT, {"role": "assistant", "content": texts[2]}]

        fake_upstream.reset()
        follow_up = {"role": "user", "content": "shorter, please"}
        second = c.post(
            "/v1/comparisons",
            json={"user": "alice", "model": "fake-model", "messages": [follow_up], "session_id": "s1"},
        ).json()
        for request in fake_upstream.chat_requests:
            sent = request.body["messages"]
            assert sent[1:] == [PROMPT, {"role": "assistant", "content": texts[2]}, follow_up]
            assert not any(m.get("content") in (texts[0], texts[1], texts[3]) for m in sent)
        c.post(f"/v1/comparisons/{second['id']}/judgement", json={"best": 0, "worst": 1, "rationale": ""})
        history = c.get("/v1/sessions/s1", headers={"X-Persona-User": "alice"}).json()["messages"]
        assert len(history) == 5 and history[3] == follow_up
        assert history[4]["content"] == second["candidates"][0]["content"]
        # Another user's session of the same id is a different session.
        assert c.get("/v1/sessions/s1", params={"user": "bob"}).json()["messages"] == []


def test_a_stale_comparison_in_a_session_is_judged_but_not_appended(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    with client(proxy) as c:
        body = {"user": "alice", "model": "fake-model", "messages": [INSTRUCTION, PROMPT], "session_id": "s2"}
        a, b = c.post("/v1/comparisons", json=body).json(), c.post("/v1/comparisons", json=body).json()
        assert c.post(f"/v1/comparisons/{a['id']}/judgement", json={"best": 0, "worst": 1}).json()[
            "session_appended"
        ]
        stale = c.post(f"/v1/comparisons/{b['id']}/judgement", json={"best": 0, "worst": 1}).json()
        assert stale["session_appended"] is False and stale["pairs_added"] == 5
        assert len(c.get("/v1/sessions/s2", params={"user": "alice"}).json()["messages"]) == 3


def test_streamed_candidates_arrive_as_each_finishes(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.responder = delayed_responder(DELAYS)
    arrivals: list[tuple[float, dict[str, Any]]] = []
    with client(proxy) as c:
        started = time.perf_counter()
        body = {"user": "alice", "model": "fake-model", "messages": [INSTRUCTION, PROMPT], "stream": True}
        with c.stream("POST", "/v1/comparisons", json=body) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("application/x-ndjson")
            for line in resp.iter_lines():
                if line:
                    arrivals.append((time.perf_counter() - started, orjson.loads(line)))
    types = [event["type"] for _, event in arrivals]
    assert types == ["comparison", "candidate", "candidate", "candidate", "candidate", "done"]
    candidates = [(t, e["candidate"]) for t, e in arrivals if e["type"] == "candidate"]
    assert [c["index"] for _, c in candidates] == [0, 1, 2, 3]  # finish order = delay order
    # the fastest (0.3 s) shows long before the slowest (0.9 s) is done: streamed, not buffered
    assert candidates[-1][0] - candidates[0][0] >= 0.4
    assert candidates[-1][0] >= 0.9
    done = arrivals[-1][1]["comparison"]
    assert done["id"] == arrivals[0][1]["id"]
    assert [x["content"] for x in done["candidates"]] == [answer_for(v) for v in DELAYS]
    with client(proxy) as c:
        judged = c.post(f"/v1/comparisons/{done['id']}/judgement", json={"best": 0, "worst": 3})
        assert judged.status_code == 201


def test_stream_reports_all_failed_as_an_error_line(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.responder = delayed_responder({}, fail=set(DELAYS))
    with httpx.Client(base_url=proxy.url, timeout=10) as c:
        c.headers["Authorization"] = client(proxy).headers["Authorization"]
        resp = c.post(
            "/v1/comparisons",
            json={"user": "alice", "model": "fake-model", "messages": [INSTRUCTION, PROMPT], "stream": True},
        )
    events = [orjson.loads(line) for line in resp.text.splitlines() if line]
    assert events[-1]["type"] == "error" and events[-1]["status"] == 502
    assert sum(1 for e in events if e["type"] == "candidate" and "error" in e["candidate"]) == 4
