"""Quotas (PERSONA_LIMITS): each limit refuses with a 429 (caps with a 400), the moving window holds
at most R calls in any window, entries merge field by field, and proxies sharing a Redis share them."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import httpx
import pytest
import redis
from redis.asyncio import Redis

from middleware.quota_policy import LimitsConfig
from middleware.quotas.service import utc_day
from middleware.quotas.usage import StreamUsage, tokens_in_body, tokens_in_sse, tokens_used
from middleware.store import keys
from middleware.store.ratelimits import RateLimitStore
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import APP_KEY_A, APP_KEY_B, RunningProxy, proxy_settings, start_proxy
from tests.support.redis_server import RedisServer

MESSAGES = [{"role": "user", "content": "hello there"}]
# The quota check shares the persona read's time bound and fails open past it; a loaded test machine
# must not turn a slow check into an admitted call.
SLOW_OK = {"persona_read_timeout_s": 2.0}


def chat(proxy: RunningProxy, user: str = "u1", key: str = APP_KEY_A, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{proxy.v1}/chat/completions",
        headers={"Authorization": f"Bearer {key}", **extra.pop("headers", {})},
        json={"model": "fake-model", "messages": MESSAGES, "user": user, **extra},
        timeout=10,
    )


def assert_429(response: httpx.Response, code: str, *, most_s: int = 60) -> int:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "rate_limit_error" and error["code"] == code
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= most_s
    return retry_after


@pytest.fixture
def limited(request: pytest.FixtureRequest, redis_url: str, fake_upstream: FakeUpstream) -> Iterator[RunningProxy]:
    limits = request.param if hasattr(request, "param") else {}
    with start_proxy(proxy_settings(redis_url, fake_upstream, limits=limits, **SLOW_OK)) as running:
        yield running


def refusals(proxy: RunningProxy, tenant: str, reason: str) -> float:
    text = httpx.get(f"{proxy.url}/metrics", timeout=5).text
    found = re.search(
        rf'persona_quota_refusals_total\{{reason="{reason}",tenant="{tenant}"\}} ([0-9.]+)', text
    )
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("limited", [{"default": {"requests_per_minute": 3}}], indirect=True)
def test_requests_per_minute_refuses_the_call_after_r(limited: RunningProxy, fake_upstream: FakeUpstream) -> None:
    assert [chat(limited, f"u{i}").status_code for i in range(3)] == [200, 200, 200]
    assert_429(chat(limited, "u9"), "requests_per_minute")
    assert len(fake_upstream.requests) == 3  # the refused call never went upstream
    assert chat(limited, "u1", key=APP_KEY_B).status_code == 200  # another tenant has its own window
    assert refusals(limited, "tenant-a", "requests_per_minute") == 1


@pytest.mark.parametrize(
    "limited",
    [{"default": {"requests_per_minute": 5}, "tenants": {"tenant-b": {"user_requests_per_minute": 2}}}],
    indirect=True,
)
def test_a_tenant_entry_overrides_the_default_field_by_field(limited: RunningProxy) -> None:
    # tenant-b keeps the default 5 per minute and adds 2 per user
    assert [chat(limited, "alice", key=APP_KEY_B).status_code for _ in range(2)] == [200, 200]
    assert_429(chat(limited, "alice", key=APP_KEY_B), "user_requests_per_minute")
    assert [chat(limited, "bob", key=APP_KEY_B).status_code for _ in range(2)] == [200, 200]
    assert chat(limited, "carol", key=APP_KEY_B).status_code == 200  # the tenant's 5th (refusals don't count)
    assert_429(chat(limited, "carol", key=APP_KEY_B), "requests_per_minute")
    # tenant-a: no per-user limit
    assert [chat(limited, "alice").status_code for _ in range(5)] == [200] * 5


def test_limits_merge_field_by_field() -> None:
    config = LimitsConfig.model_validate(
        {
            "default": {"requests_per_minute": 10, "max_n": 2, "tokens_per_day": 1000},
            "tenants": {"acme": {"requests_per_minute": 50, "max_variants": 3}},
        }
    )
    acme, other = config.for_tenant("acme"), config.for_tenant("other")
    assert (acme.requests_per_minute, acme.max_n, acme.tokens_per_day, acme.max_variants) == (50, 2, 1000, 3)
    assert (other.requests_per_minute, other.max_n, other.max_variants) == (10, 2, 8)
    unset = LimitsConfig().for_tenant("x")
    assert (unset.max_n, unset.max_variants, unset.max_pending_comparisons) == (8, 8, 100)
    assert not unset.metered and unset.requests_per_minute is None
    with pytest.raises(ValueError):
        LimitsConfig.model_validate({"default": {"requests_per_minute": 0}})
    with pytest.raises(ValueError):
        LimitsConfig.model_validate({"default": {"request_per_minute": 5}})  # a typo is refused


async def test_moving_window_never_lets_more_than_r_through_in_any_window(redis_url: str) -> None:
    """The property behind requests_per_minute, with a 1 s window to keep the test short: for every
    admitted call k, the call R places later was admitted at least one window after k was sent. A
    fixed window would let 2R through around its boundary."""
    redis = Redis.from_url(redis_url)
    store = RateLimitStore(redis)
    limit, window_ms = 4, 1000
    admitted: list[tuple[float, float]] = []
    refused = 0
    try:
        deadline = time.monotonic() + 3.2
        while time.monotonic() < deadline:
            sent = time.monotonic()
            reason, wait_ms = await store.admit(
                store.admit_call(
                    "t", None, cost=1, rpm=limit, user_rpm=0, concurrency=0, lease="", lease_ms=0,
                    tokens_per_day=0, day="d", ms_to_day_end=1, window_ms=window_ms,
                )
            )
            if reason == 0:
                admitted.append((sent, time.monotonic()))
            else:
                refused += 1
                assert 0 < wait_ms <= window_ms
            await asyncio.sleep(0.003)
        assert await redis.llen(keys.rate_log("t")) == limit  # the log keeps R entries, no more
    finally:
        await redis.aclose()
    assert refused > 0
    assert len(admitted) >= 3 * limit  # it kept admitting as the window moved
    for k in range(len(admitted) - limit):
        assert admitted[k + limit][1] - admitted[k][0] >= window_ms / 1000.0 - 0.002


async def test_a_lease_never_given_back_frees_its_slot_once_its_time_is_up(redis_url: str) -> None:
    """Concurrency: the leases of calls whose process died mid-call (never given back) hold their
    slots only until their time is up; then the next call is admitted in their place, while a call
    still within its time keeps its slot (and keeps the set alive)."""
    redis = Redis.from_url(redis_url)
    store = RateLimitStore(redis)
    dead_ms = 300

    async def admit(lease: str, lease_ms: int = 60_000) -> tuple[int, int]:
        return await store.admit(
            store.admit_call(
                "crashed", None, cost=1, rpm=0, user_rpm=0, concurrency=3, lease=lease, lease_ms=lease_ms,
                tokens_per_day=0, day="d", ms_to_day_end=1,
            )
        )

    try:
        assert await admit("dead-1", dead_ms) == (0, 0)
        assert await admit("dead-2", dead_ms) == (0, 0)
        held_since = time.monotonic()
        assert await admit("live") == (0, 0)
        assert await admit("refused") == (3, 1000)
        deadline = held_since + 5.0
        while (answer := await admit("next")) != (0, 0) and time.monotonic() < deadline:
            assert answer == (3, 1000)
            await asyncio.sleep(0.02)
        assert answer == (0, 0)
        assert time.monotonic() - held_since >= dead_ms / 1000.0 - 0.05
        # both dead leases are gone: one more call fills the last slot, the next is refused
        assert await admit("next-2") == (0, 0)
        assert await admit("refused-2") == (3, 1000)
        members = await redis.zrange(keys.in_flight("crashed"), 0, -1)
        assert sorted(members) == [b"live", b"next", b"next-2"]
    finally:
        await redis.aclose()


@pytest.mark.parametrize("limited", [{"default": {"requests_per_minute": 5}}], indirect=True)
def test_a_rerank_counts_one_call_per_variant(limited: RunningProxy, fake_upstream: FakeUpstream) -> None:
    headers = {"X-Persona-Mode": "rerank"}
    fake_upstream.responder = lambda body: (
        {"reasoning": "r", "preferred": "A"} if "response_format" in body else "an answer"
    )
    assert chat(limited, headers=headers).status_code == 200  # 4 candidate calls
    assert_429(chat(limited, headers=headers), "requests_per_minute")  # 4 more would make 8
    assert chat(limited).status_code == 200  # one plain call still fits (5)
    assert_429(chat(limited), "requests_per_minute")


def test_two_proxies_on_one_redis_share_the_limit(redis_url: str, fake_upstream: FakeUpstream) -> None:
    settings = proxy_settings(redis_url, fake_upstream, limits={"default": {"requests_per_minute": 4}}, **SLOW_OK)
    with start_proxy(settings) as first, start_proxy(settings) as second:
        statuses = [chat(p, f"u{i}").status_code for i, p in enumerate([first, second] * 2)]
        assert statuses == [200, 200, 200, 200]
        assert_429(chat(first), "requests_per_minute")
        assert_429(chat(second), "requests_per_minute")
    assert len(fake_upstream.requests) == 4


@pytest.mark.parametrize("limited", [{"default": {"concurrency": 1}}], indirect=True)
def test_concurrency_limits_calls_in_flight(limited: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content="slow", delay=1.5))
    first: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: first.append(chat(limited, "u1")))
    holder.start()
    deadline = time.monotonic() + 5
    while not fake_upstream.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake_upstream.requests, "the first call never reached the upstream"
    assert_429(chat(limited, "u2"), "concurrency")
    holder.join(10)
    assert first[0].status_code == 200
    assert chat(limited, "u2").status_code == 200  # the slot was given back
    # a stream holds its slot until it ends, then gives it back
    fake_upstream.script(Reply(content="one two three four five six", chunk_delay=0.2))
    with httpx.stream(
        "POST", f"{limited.v1}/chat/completions", headers={"Authorization": f"Bearer {APP_KEY_A}"},
        json={"model": "fake-model", "messages": MESSAGES, "stream": True}, timeout=10,
    ) as streamed:
        assert streamed.status_code == 200
        assert_429(chat(limited, "u3"), "concurrency")
        streamed.read()
    deadline = time.monotonic() + 3
    while (status := chat(limited, "u3").status_code) == 429 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert status == 200


@pytest.mark.parametrize("limited", [{"default": {"tokens_per_day": 30}}], indirect=True)
def test_tokens_per_day_counts_the_upstreams_usage(limited: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content="word " * 40))
    first = chat(limited)
    assert first.status_code == 200
    used = first.json()["usage"]["total_tokens"]
    assert used >= 30
    assert_429(chat(limited), "tokens_per_day", most_s=86_400)
    assert chat(limited, key=APP_KEY_B).status_code == 200
    day = time.strftime("%Y%m%d", time.gmtime())
    assert int(cast(Any, sync_redis(limited).get(f"pm:{{limits:tenant-a}}:tokens:{day}")) or 0) == used


@pytest.mark.parametrize("limited", [{"default": {"tokens_per_day": 1000}}], indirect=True)
def test_streamed_usage_is_counted(limited: RunningProxy) -> None:
    day = time.strftime("%Y%m%d", time.gmtime())
    with httpx.stream(
        "POST", f"{limited.v1}/chat/completions", headers={"Authorization": f"Bearer {APP_KEY_A}"},
        json={"model": "fake-model", "messages": MESSAGES, "stream": True,
              "stream_options": {"include_usage": True}},
        timeout=10,
    ) as streamed:
        body = streamed.read()
    reported = tokens_in_sse(body)
    assert reported > 0
    deadline = time.monotonic() + 3
    used = 0
    while time.monotonic() < deadline:
        used = int(cast(Any, sync_redis(limited).get(f"pm:{{limits:tenant-a}}:tokens:{day}")) or 0)
        if used:
            break
        time.sleep(0.02)
    assert used == reported


def sync_redis(proxy: RunningProxy) -> redis.Redis:
    return redis.Redis.from_url(proxy.settings.redis_url)


@pytest.mark.parametrize("limited", [{"default": {"user_requests_per_minute": 50}}], indirect=True)
def test_forget_removes_the_users_rate_log(limited: RunningProxy) -> None:
    assert chat(limited, "bob|42").status_code == 200
    key = "pm:{limits:tenant-a}:user:bob|42:rpm"
    client = sync_redis(limited)
    try:
        assert client.exists(key) == 1
        forgot = httpx.delete(
            f"{limited.url}/admin/users/bob%7C42", headers=limited.admin_headers("tenant-a"), timeout=10
        )
        assert forgot.status_code == 200, forgot.text
        assert client.exists(key) == 0
    finally:
        client.close()


def test_usage_is_counted_in_both_apis_shapes() -> None:
    assert tokens_used({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}) == 15
    assert tokens_used({"input_tokens": 7, "output_tokens": 3}) == 10
    assert tokens_used({"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 2}) == 12
    assert tokens_used({"total_tokens": 9}) == 9
    assert tokens_used(None) == tokens_used({"prompt_tokens": "x"}) == tokens_used({"input_tokens": True}) == 0
    assert tokens_in_body(b'{"id":"r","usage":{"input_tokens":4,"output_tokens":6}}') == 10
    assert tokens_in_body(b"not json") == 0
    events = (
        b'data: {"type":"response.completed","response":{"usage":{"input_tokens":2,"output_tokens":3}}}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\ndata: [DONE]\n\n'
    )
    assert tokens_in_sse(events) == 7


# A Responses stream as the API writes it: the Response object's `usage` is null until the last event;
# a text delta quoting a `usage` member (escaped, so not a member) counts nothing.
RESPONSES_USAGE_STREAM = (
    b'event: response.created\ndata: {"type":"response.created","response":{"id":"r1","usage":null,'
    b'"tools":[{"type":"function","parameters":{"properties":{"usage":{"type":"object"}}}}]}}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"delta":"say \\"usage\\":{\\"input_tokens\\":900}"}\n\n'
    b'event: response.in_progress\ndata: {"type":"response.in_progress","usage" : null,'
    b'"response":{"id":"r1","usage": null}}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","usage":null,"response":{"id":"r1",'
    b'"usage" :{"input_tokens":11,"input_tokens_details":{"cached_tokens":0},"output_tokens":5}}}\n\n'
)


def test_a_streams_usage_is_counted_wherever_the_chunks_are_cut() -> None:
    for cut in range(1, len(RESPONSES_USAGE_STREAM)):
        usage = StreamUsage()
        usage.feed(RESPONSES_USAGE_STREAM[:cut])
        usage.feed(RESPONSES_USAGE_STREAM[cut:])
        assert usage.total() == 16, cut
    # Anthropic repeats its counts cumulatively: each field counts with its largest value
    messages = StreamUsage()
    for event in (
        b'data: {"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}\n\n',
        b'data: {"type":"message_delta","usage":{"output_tokens":4}}\n\n',
        b'data: {"type":"message_delta","usage":{"output_tokens":12}}',  # the last line without its newline
    ):
        messages.feed(event)
    assert messages.total() == 21
    # only null usage (and the tools' schema, whose `usage` is no answer's): nothing counted
    nothing = StreamUsage()
    nothing.feed(RESPONSES_USAGE_STREAM.rsplit(b"event: response.completed", 1)[0])
    assert nothing.total() == 0


def test_caps_apply_without_persona_limits(limited: RunningProxy, fake_upstream: FakeUpstream) -> None:
    refused = chat(limited, n=9)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "limit_exceeded" and refused.json()["error"]["param"] == "n"
    assert chat(limited, n=2).status_code == 200
    assert [chat(limited).status_code for _ in range(20)] == [200] * 20  # no rate limit when unset
    assert refusals(limited, "tenant-a", "max_n") == 1


@pytest.mark.parametrize("limited", [{"default": {"max_output_tokens": 100, "max_n": 2}}], indirect=True)
def test_output_token_and_n_caps(limited: RunningProxy, fake_upstream: FakeUpstream) -> None:
    for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        refused = chat(limited, **cast(dict[str, Any], {field: 101}))
        assert refused.status_code == 400 and refused.json()["error"]["param"] == field
    assert chat(limited, max_tokens=100).status_code == 200
    assert chat(limited, n=3).status_code == 400
    assert len(fake_upstream.requests) == 1


def comparison(proxy: RunningProxy, user: str = "u1", **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{proxy.v1}/comparisons",
        headers={"Authorization": f"Bearer {APP_KEY_A}"},
        json={"user": user, "model": "fake-model", "messages": MESSAGES, **extra},
        timeout=10,
    )


@pytest.mark.parametrize(
    "limited", [{"default": {"max_pending_comparisons": 2, "max_variants": 3}}], indirect=True
)
def test_pending_comparisons_and_variants(limited: RunningProxy, fake_upstream: FakeUpstream) -> None:
    three = [{"instruction_role": "system", "temperature": t} for t in (0.1, 0.5, 1.0)]
    four = [*three, {"instruction_role": "assistant", "temperature": 0.7}]
    refused = comparison(limited, variants=four)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "variants", refused.text
    first = comparison(limited, variants=three)
    assert first.status_code == 200, first.text
    assert comparison(limited, variants=three).status_code == 200
    assert_429(comparison(limited, variants=three), "max_pending_comparisons", most_s=24 * 3600)
    assert comparison(limited, user="u2", variants=three).status_code == 200  # per user
    judged = httpx.post(
        f"{limited.v1}/comparisons/{first.json()['id']}/judgement",
        headers={"Authorization": f"Bearer {APP_KEY_A}"},
        json={"best": 0, "worst": 1, "rationale": "shorter"},
        timeout=10,
    )
    assert judged.status_code == 201, judged.text
    assert comparison(limited, variants=three).status_code == 200  # the judged one no longer counts


@pytest.mark.parametrize("limited", [{"default": {"requests_per_minute": 5}}], indirect=True)
def test_comparisons_count_one_call_per_variant(limited: RunningProxy) -> None:
    assert comparison(limited).status_code == 200  # 4 variants
    assert_429(comparison(limited), "requests_per_minute")
    assert chat(limited).status_code == 200


@pytest.mark.parametrize("limited", [{"default": {"requests_per_minute": 2}}], indirect=True)
def test_the_persona_read_and_the_quota_share_one_round_trip(
    limited: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    httpx.put(
        f"{limited.url}/admin/users/u1/persona", json={"text": "Likes haiku."}, headers=limited.admin_headers()
    ).raise_for_status()
    sync_redis(limited).script_flush()  # e.g. Redis restarted: the script is loaded again on demand
    first = chat(limited, "u1")
    assert first.status_code == 200 and first.headers["x-persona-version"] == "1"
    assert "Likes haiku." in str(fake_upstream.chat_requests[-1].messages)
    assert chat(limited, "u1", headers={"X-Persona-Mode": "off"}).status_code == 200  # counted without a read
    assert_429(chat(limited, "u1"), "requests_per_minute")


def test_quotas_fail_open_when_redis_is_down(
    redis_factory: Callable[..., RedisServer], fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_factory()
    limits = {"default": {"requests_per_minute": 1, "concurrency": 1}}
    with start_proxy(proxy_settings(server.url, fake_upstream, limits=limits, **SLOW_OK)) as limited:
        assert chat(limited, "u1").status_code == 200
        assert_429(chat(limited, "u1"), "requests_per_minute")
        server.kill()
        with caplog.at_level(logging.WARNING, logger="middleware"):
            assert [chat(limited, "u1").status_code for _ in range(3)] == [200, 200, 200]
        text = httpx.get(f"{limited.url}/metrics", timeout=5).text
    assert re.search(r"persona_quota_store_failures_total ([1-9][0-9.]*)", text)
    # the operator's log says what the fault was, not only its type
    skipped = [r.getMessage() for r in caplog.records if "quota check skipped" in r.getMessage()]
    assert skipped and all(re.search(r"the store failed: \w+: \S", message) for message in skipped), skipped


async def test_induction_calls_count_against_the_tenant(redis_url: str, fake_upstream: FakeUpstream) -> None:
    from tests.induction_fakes import InductionResponder, make_pairs
    from tests.jobs_support import store_services

    limits = {"default": {"requests_per_minute": 1000, "tokens_per_day": 10**9}}
    settings = proxy_settings(redis_url, fake_upstream, induction_model="fake-judge", limits=limits)
    async with store_services(settings) as services:
        await services.preferences.add_pairs("tenant-a", "alice", make_pairs("alice", 10))
        fake_upstream.responder = InductionResponder()
        await services.induction.induce("tenant-a", "alice")
        calls = len(fake_upstream.chat_requests)
        assert calls > 5
        client = redis.Redis.from_url(redis_url)
        day = time.strftime("%Y%m%d", time.gmtime())
        assert client.llen("pm:{limits:tenant-a}:rpm") == calls
        assert int(cast(Any, client.get(f"pm:{{limits:tenant-a}}:tokens:{day}")) or 0) > 0
        client.close()


def judging(body: dict[str, Any]) -> str | dict[str, Any]:
    """Candidates answer plainly; the judge (a JSON-schema call) prefers the first answer shown."""
    return {"reasoning": "r", "preferred": "A"} if "response_format" in body else "an answer"


@pytest.mark.parametrize("limited", [{"default": {"requests_per_minute": 16}}], indirect=True)
def test_the_judge_rerankers_calls_are_admitted_and_counted(
    limited: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.responder = judging
    reranked = chat(limited, headers={"X-Persona-Mode": "rerank", "X-Persona-Reranker": "judge"})
    assert reranked.status_code == 200 and reranked.headers["x-persona-rerank-fallback"] == "false"
    assert sum("response_format" in r.body for r in fake_upstream.chat_requests) == 12
    # 4 candidates + 12 judge calls: the window is full, though only 4 calls were chat-shaped
    assert_429(chat(limited), "requests_per_minute")


@pytest.mark.parametrize("limited", [{"default": {"requests_per_minute": 10}}], indirect=True)
def test_a_judge_over_the_limit_falls_back_without_calling_upstream(
    limited: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.responder = judging
    reranked = chat(limited, headers={"X-Persona-Mode": "rerank", "X-Persona-Reranker": "judge"})
    assert reranked.status_code == 200 and reranked.headers["x-persona-rerank-fallback"] == "true"
    assert not any("response_format" in r.body for r in fake_upstream.chat_requests)  # 12 refused at once
    assert refusals(limited, "tenant-a", "requests_per_minute") == 1
    assert [chat(limited).status_code for _ in range(6)] == [200] * 6  # the 4 candidates + 6 = 10
    assert_429(chat(limited), "requests_per_minute")


@pytest.mark.parametrize("limited", [{"default": {"tokens_per_day": 1000}}], indirect=True)
def test_the_judges_tokens_count_against_the_day(limited: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.responder = judging
    reranked = chat(limited, headers={"X-Persona-Mode": "rerank", "X-Persona-Reranker": "judge"})
    assert reranked.status_code == 200 and reranked.headers["x-persona-rerank-fallback"] == "false"
    raw = cast(bytes | None, sync_redis(limited).get(keys.tokens_day("tenant-a", utc_day(time.time())[0])))
    used = int(raw or 0)
    assert used > 1000, used  # the candidates alone use a few dozen; the 12 judge prompts the rest
    assert_429(chat(limited), "tokens_per_day", most_s=86_400)


def evaluation_run(proxy: RunningProxy) -> str:
    with httpx.Client(base_url=proxy.url, headers=proxy.admin_headers(), timeout=10) as admin:
        for user in ("alice", "bob"):
            admin.put(f"/admin/users/{user}/persona", json={"text": f"{user} likes haiku"}).raise_for_status()
        run = admin.post("/admin/evaluations", json={"users": ["alice", "bob"], "model": "fake-model"})
        run.raise_for_status()
        return str(run.json()["id"])


def trial(proxy: RunningProxy, run_id: str) -> httpx.Response:
    return httpx.post(
        f"{proxy.v1}/evaluations/{run_id}/trials",
        headers={"Authorization": f"Bearer {APP_KEY_A}"},
        json={"user": "alice", "messages": MESSAGES},
        timeout=10,
    )


@pytest.mark.parametrize(
    "limited",
    [{"default": {"requests_per_minute": 4}, "tenants": {"tenant-b": {"tokens_per_day": 1}}}],
    indirect=True,
)
def test_trials_count_their_calls_and_tokens(limited: RunningProxy, fake_upstream: FakeUpstream) -> None:
    run_id = evaluation_run(limited)
    assert trial(limited, run_id).status_code == 201  # 3 upstream calls
    assert_429(trial(limited, run_id), "requests_per_minute")
    assert chat(limited).status_code == 200  # the 4th
    assert_429(chat(limited), "requests_per_minute")
    # tokens: tenant-b may use 1 token a day; a trial's answers use more, so the next call is refused
    with httpx.Client(base_url=limited.url, headers=limited.admin_headers("tenant-b"), timeout=10) as admin:
        for user in ("alice", "bob"):
            admin.put(f"/admin/users/{user}/persona", json={"text": f"{user} likes haiku"}).raise_for_status()
        run_b = admin.post("/admin/evaluations", json={"users": ["alice", "bob"], "model": "fake-model"})
    run_b.raise_for_status()
    created = httpx.post(
        f"{limited.v1}/evaluations/{run_b.json()['id']}/trials",
        headers={"Authorization": f"Bearer {APP_KEY_B}"},
        json={"user": "alice", "messages": MESSAGES},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    assert_429(chat(limited, key=APP_KEY_B), "tokens_per_day", most_s=86_400)
