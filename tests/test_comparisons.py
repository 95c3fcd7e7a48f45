"""POST /v1/comparisons and its judgement, against real Redis and the fake upstream."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

import httpx
import orjson
import pytest
import redis

from middleware.store import keys
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import APP_KEY_B, RunningProxy, proxy_settings, start_proxy
from tests.support.proxy import app_client as client
from tests.support.redis_server import RedisServer

INSTRUCTION = {"role": "system", "content": "Summarize the post in one sentence."}
PROMPT = {"role": "user", "content": "POST: my cat learned to open the fridge"}
# Variant -> (delay s, answer). Variants are told apart by where the instruction is and the temperature.
DELAYS = {("system", 1.0): 0.3, ("system", 0.1): 0.5, ("assistant", 1.0): 0.7, ("assistant", 0.1): 0.9}


def variant_of(body: dict[str, Any]) -> tuple[str, float]:
    roles = [m["role"] for m in body["messages"] if m.get("content") == INSTRUCTION["content"]]
    return (roles[0] if roles else "none", float(body["temperature"]))


def answer_for(variant: tuple[str, float]) -> str:
    return f"answer {variant[0]} {variant[1]}"


def delayed_responder(
    delays: dict[tuple[str, float], float], fail: AbstractSet[tuple[str, float]] = frozenset()
) -> Callable[[dict[str, Any]], Reply]:
    def respond(body: dict[str, Any]) -> Reply:
        variant = variant_of(body)
        if variant in fail:
            return Reply(
                status=400, error_message=f"injected failure {variant}", delay=delays.get(variant, 0)
            )
        return Reply(content=answer_for(variant), delay=delays.get(variant, 0.0))

    return respond


def create(c: httpx.Client, user: str = "alice", **extra: Any) -> httpx.Response:
    body = {"user": user, "model": "fake-model", "messages": [INSTRUCTION, PROMPT], **extra}
    return c.post("/v1/comparisons", json=body)


def stream_records(redis_url: str, tenant: str, user: str) -> list[dict[str, Any]]:
    r = redis.Redis.from_url(redis_url)
    try:
        return [
            {"id": f[b"id"].decode(), "kind": f[b"kind"].decode(), "data": orjson.loads(f[b"data"])}
            for _, f in r.xrange(keys.prefs(tenant, user))  # type: ignore[union-attr]
        ]
    finally:
        r.close()


@pytest.fixture(autouse=True)
def distinct_answers(fake_upstream: FakeUpstream) -> None:
    """Each variant answers differently (identical answers yield no pair)."""
    fake_upstream.responder = lambda body: Reply(
        content=f"answer {'/'.join(m['role'] for m in body['messages'])} {body.get('temperature')}"
    )


def test_four_candidates_run_concurrently_in_the_variants_of_table_1(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.responder = delayed_responder(DELAYS)
    with client(proxy) as c:
        started = time.perf_counter()
        resp = create(c)
        wall = time.perf_counter() - started
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["id"].startswith("cmp_")
    assert [c["index"] for c in body["candidates"]] == [0, 1, 2, 3]
    assert [c["content"] for c in body["candidates"]] == [answer_for(v) for v in DELAYS]
    # Wall time is at least the slowest candidate's (0.9 s); the four calls reached the upstream
    # together (one after another they would be 0.3 + 0.5 + 0.7 = 1.5 s apart, and 2.4 s in all).
    assert 0.9 <= wall < 2.4, wall
    requests = fake_upstream.chat_requests
    received = [r.received_at for r in requests]
    assert max(received) - min(received) < 1.0, received
    assert len(requests) == 4
    seen = {variant_of(r.body): r.body["messages"] for r in requests}
    assert set(seen) == set(DELAYS)
    # Instruction as an assistant message placed first, the prompt after it.
    assert seen[("assistant", 0.1)] == [{"role": "assistant", "content": INSTRUCTION["content"]}, PROMPT]
    assert seen[("system", 1.0)] == [INSTRUCTION, PROMPT]
    assert all("user" not in r.body for r in requests)


def test_candidates_carry_the_users_persona_unless_asked_not_to(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    with httpx.Client(base_url=proxy.url, timeout=10) as admin:
        put = admin.put(
            "/admin/users/alice/persona",
            json={"text": "Prefers terse answers with no emoji."},
            headers=proxy.admin_headers(),
        )
        assert put.status_code == 200, put.text
    with client(proxy) as c:
        body = create(c).json()
        assert body["persona_version"] == 1
        assert all("terse answers" in str(r.body["messages"]) for r in fake_upstream.chat_requests)
        fake_upstream.reset()
        assert create(c, persona=False).json()["persona_version"] is None
        assert not any("terse answers" in str(r.body["messages"]) for r in fake_upstream.chat_requests)


def test_a_failed_candidate_is_reported_and_the_others_returned(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.responder = delayed_responder({}, fail={("assistant", 1.0)})
    with client(proxy) as c:
        body = create(c).json()
        failed = body["candidates"][2]
        assert "content" not in failed
        assert failed["error"]["status"] == 400 and "injected failure" in failed["error"]["message"]
        assert [("content" in x) for x in body["candidates"]] == [True, True, False, True]
        # The failed candidate cannot be chosen; judging the rest yields 2 + 1 pairs.
        bad = c.post(f"/v1/comparisons/{body['id']}/judgement", json={"best": 2, "worst": 0, "rationale": ""})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "best"
        ok = c.post(f"/v1/comparisons/{body['id']}/judgement", json={"best": 0, "worst": 3, "rationale": "r"})
        assert ok.status_code == 201, ok.text
    kinds = [r["kind"] for r in stream_records(proxy.settings.redis_url, "tenant-a", "alice")]
    assert kinds == ["judgement", "pair", "pair", "pair"]


def test_all_candidates_failing_is_502_and_nothing_is_stored(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.responder = delayed_responder({}, fail=set(DELAYS))
    with client(proxy) as c:
        resp = create(c)
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "all_candidates_failed"
    r = redis.Redis.from_url(proxy.settings.redis_url)
    assert r.keys("pm:*") == []
    r.close()


def test_judgement_stores_the_raw_judgement_and_five_pairs_atomically(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    with client(proxy) as c:
        comparison = create(c).json()
        cid = comparison["id"]
        resp = c.post(
            f"/v1/comparisons/{cid}/judgement", json={"best": 1, "worst": 3, "rationale": "short wins"}
        )
        assert resp.status_code == 201, resp.text
        result = resp.json()
        assert result["pairs_added"] == 5
        again = c.post(f"/v1/comparisons/{cid}/judgement", json={"best": 0, "worst": 2, "rationale": "x"})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "already_judged"
    records = stream_records(proxy.settings.redis_url, "tenant-a", "alice")
    assert [r["kind"] for r in records] == ["judgement"] + ["pair"] * 5
    judgement = records[0]["data"]
    assert (judgement["best"], judgement["worst"], judgement["rationale"]) == (1, 3, "short wins")
    assert [v["temperature"] for v in judgement["variants"]] == [1.0, 0.1, 1.0, 0.1]
    assert judgement["context"] == [INSTRUCTION, PROMPT]
    texts = {c["index"]: c["content"] for c in comparison["candidates"]}
    pairs = {(p["data"]["chosen_index"], p["data"]["rejected_index"]) for p in records[1:]}
    assert pairs == {(1, 0), (1, 2), (1, 3), (0, 3), (2, 3)}
    for p in records[1:]:
        data = p["data"]
        assert data["chosen"]["content"] == texts[data["chosen_index"]]
        assert data["rejected"]["content"] == texts[data["rejected_index"]]
        assert data["rationale"] == "short wins" and data["user_id"] == "alice"
    r = redis.Redis.from_url(proxy.settings.redis_url)
    assert r.get(keys.comparison("tenant-a", "alice", cid)) is None  # pending comparison closed
    r.close()


def test_bad_judgements_are_clear_4xx_and_store_nothing(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    with client(proxy) as c, client(proxy, APP_KEY_B) as other:
        cid = create(c).json()["id"]
        same = c.post(f"/v1/comparisons/{cid}/judgement", json={"best": 2, "worst": 2, "rationale": ""})
        assert same.status_code == 422
        out_of_range = c.post(f"/v1/comparisons/{cid}/judgement", json={"best": 7, "worst": 2})
        assert out_of_range.status_code == 422
        unknown = c.post("/v1/comparisons/cmp_doesnotexist/judgement", json={"best": 0, "worst": 1})
        assert unknown.status_code == 404
        wrong_tenant = other.post(f"/v1/comparisons/{cid}/judgement", json={"best": 0, "worst": 1})
        assert wrong_tenant.status_code == 404
        wrong_user = c.post(
            f"/v1/comparisons/{cid}/judgement",
            json={"best": 0, "worst": 1},
            headers={"X-Persona-User": "mallory"},
        )
        assert wrong_user.status_code == 404
        no_key = httpx.post(f"{proxy.url}/v1/comparisons/{cid}/judgement", json={"best": 0, "worst": 1})
        assert no_key.status_code == 401
    assert stream_records(proxy.settings.redis_url, "tenant-a", "alice") == []
    # ... and the comparison is still there to be judged properly.
    with client(proxy) as c:
        assert c.post(f"/v1/comparisons/{cid}/judgement", json={"best": 0, "worst": 1}).status_code == 201


def test_expired_comparison_is_404(redis_url: str, fake_upstream: FakeUpstream) -> None:
    running = start_proxy(proxy_settings(redis_url, fake_upstream, comparison_ttl_s=1))
    try:
        with client(running) as c:
            cid = create(c).json()["id"]
            store = redis.Redis.from_url(redis_url)
            pending = [keys.comparison("tenant-a", "alice", cid), keys.comparison_owner(cid)]
            assert all(0 < int(store.pttl(key)) <= 1000 for key in pending)  # type: ignore[arg-type]
            deadline = time.monotonic() + 10
            while store.exists(*pending) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert store.exists(*pending) == 0, "the pending comparison never expired"
            store.close()
            resp = c.post(f"/v1/comparisons/{cid}/judgement", json={"best": 0, "worst": 1})
        assert resp.status_code == 404
        assert "expired" in resp.json()["error"]["message"]
    finally:
        running.server.stop()


def test_concurrent_judgements_store_once(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    with client(proxy) as c:
        cid = create(c).json()["id"]
    statuses: list[int] = []
    barrier = threading.Barrier(6)

    def judge(best: int) -> None:
        with client(proxy) as c:
            barrier.wait()
            resp = c.post(
                f"/v1/comparisons/{cid}/judgement", json={"best": best % 4, "worst": (best + 1) % 4}
            )
            statuses.append(resp.status_code)

    threads = [threading.Thread(target=judge, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201, 409, 409, 409, 409, 409]
    records = stream_records(proxy.settings.redis_url, "tenant-a", "alice")
    assert [r["kind"] for r in records] == ["judgement"] + ["pair"] * 5


def test_user_from_header_and_missing_user(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    with client(proxy) as c:
        body = {"model": "fake-model", "messages": [PROMPT]}
        assert c.post("/v1/comparisons", json=body).status_code == 400
        resp = c.post("/v1/comparisons", json=body, headers={"X-Persona-User": "bob"})
        assert resp.status_code == 200 and resp.json()["user"] == "bob"
        assert c.post("/v1/comparisons", json={**body, "user": "u" * 257}).status_code == 400
        forged = c.post("/v1/comparisons", json={**body, "user": "bob", "api_base": "http://evil"})
        assert forged.status_code == 422


def test_custom_variant_set(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    variants = [
        {"instruction_role": "system", "temperature": 0.0},
        {"instruction_role": "assistant", "temperature": 2.0},
    ]
    with client(proxy) as c:
        body = create(c, variants=variants).json()
    assert [x["variant"] for x in body["candidates"]] == variants
    assert sorted(r.body["temperature"] for r in fake_upstream.chat_requests) == [0.0, 2.0]


@pytest.mark.parametrize("n_variants", [1, 9])
def test_variant_count_is_bounded(proxy: RunningProxy, fake_upstream: FakeUpstream, n_variants: int) -> None:
    with client(proxy) as c:
        resp = create(c, variants=[{"instruction_role": "system", "temperature": 1.0}] * n_variants)
    assert resp.status_code == 422


def test_identical_answers_yield_no_pair_between_them(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.responder = lambda body: Reply(content="same" if body["temperature"] < 0.5 else "other")
    with client(proxy) as c:
        cid = create(c).json()["id"]  # answers: other, same, other, same
        result = c.post(f"/v1/comparisons/{cid}/judgement", json={"best": 0, "worst": 1}).json()
    # best(0) > 1, 3 (2 is identical to 0); 2 > worst(1); 3 is identical to worst.
    assert [r["id"].split(":")[-1] for r in result["records"]] == ["judgement", "0>1", "0>3", "2>1"]


def test_judgement_fails_closed_and_can_be_retried(
    fresh_redis: RedisServer, fake_upstream: FakeUpstream
) -> None:
    running = start_proxy(proxy_settings(fresh_redis.url, fake_upstream, redis_socket_timeout_s=0.3))
    try:
        with client(running) as c:
            cid = create(c).json()["id"]
            with fresh_redis.while_paused():
                down = c.post(f"/v1/comparisons/{cid}/judgement", json={"best": 0, "worst": 1})
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "store_unavailable"
            retry = c.post(f"/v1/comparisons/{cid}/judgement", json={"best": 0, "worst": 1})
            assert retry.status_code == 201 and retry.json()["pairs_added"] == 5
        assert [r["kind"] for r in stream_records(fresh_redis.url, "tenant-a", "alice")].count(
            "judgement"
        ) == 1
    finally:
        running.server.stop()
