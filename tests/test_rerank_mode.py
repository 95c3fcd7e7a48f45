"""X-Persona-Mode: rerank — candidates sampled, scored by a registered reranker, the best returned."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, cast

import httpx
import openai
import pytest
import redis
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from redis.asyncio import Redis as AsyncRedis

from middleware.quotas.service import utc_day
from middleware.rerank.hookspec import EndUser
from middleware.rerank.registry import RerankerRegistry
from middleware.store import keys
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.metrics import sample
from tests.support.proxy import APP_KEY_A, RunningProxy, proxy_settings, start_proxy
from tests.support.redis_topologies import wait_for

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": "Name a fruit."}]


def by_variant(body: dict[str, Any]) -> str | dict[str, Any] | None:
    """Candidates differ by variant; judge calls (JSON schema) prefer the answer marked GOOD."""
    if "response_format" in body:
        prompt = body["messages"][-1]["content"]
        a = re.search(r"<completion_a>(.*?)</completion_a>", prompt, re.S).group(1)  # type: ignore[union-attr]
        return {"reasoning": "marked answer", "preferred": "A" if "GOOD" in a else "B"}
    role = body["messages"][0]["role"]
    temperature = body["temperature"]
    texts = {
        ("system", 1.0): "a long answer about apples and pears",
        ("system", 0.1): "kiwi",
        ("assistant", 1.0): "GOOD banana",
        ("assistant", 0.1): "a medium answer: grape",
    }
    return texts[(role, temperature)]


class ShortestFirst:
    calls: ClassVar[list[tuple[list[str], EndUser | None]]] = []

    async def score(self, context: Sequence[dict[str, Any]], candidates: Sequence[str], *, user: EndUser | None) -> list[float]:
        ShortestFirst.calls.append((list(candidates), user))
        return [-float(len(c)) for c in candidates]


class SlowShortest(ShortestFirst):
    async def score(self, context: Sequence[dict[str, Any]], candidates: Sequence[str], *, user: EndUser | None) -> list[float]:
        await asyncio.sleep(0.12)
        return await super().score(context, candidates, user=user)


class EarlyBird(ShortestFirst):
    """Records the candidates handed over early (prepare_candidate) and when scoring starts."""

    events: ClassVar[list[tuple[str, str]]] = []

    async def prepare_candidate(self, text: str, *, user: EndUser | None) -> None:
        EarlyBird.events.append(("prepared", text))
        if text == "kiwi":
            raise RuntimeError("a failing head start must not matter")

    async def score(self, context: Sequence[dict[str, Any]], candidates: Sequence[str], *, user: EndUser | None) -> list[float]:
        EarlyBird.events.append(("score", ",".join(candidates)))
        return await super().score(context, candidates, user=user)


class Broken:
    async def score(self, context: Sequence[dict[str, Any]], candidates: Sequence[str], *, user: EndUser | None) -> list[float]:
        raise RuntimeError("scorer down")


# The test rerankers registered below, enabled like any operator-chosen reranker.
ENABLED = ["judge", "shortest", "slow", "early", "broken", "unregistered"]


@pytest.fixture
def proxy(redis_url: str, fake_upstream: FakeUpstream) -> Iterator[RunningProxy]:
    with start_proxy(proxy_settings(redis_url, fake_upstream, rerankers_enabled=ENABLED)) as running:
        yield running


def registry(proxy: RunningProxy) -> RerankerRegistry:
    return proxy.services.rerankers


def sdk(proxy: RunningProxy, reranker: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy.v1,
        api_key=APP_KEY_A,
        max_retries=0,
        default_headers={"X-Persona-Mode": "rerank", "X-Persona-Reranker": reranker, **headers},
    )


def test_built_in_rerankers_come_from_entry_points(proxy: RunningProxy) -> None:
    assert {"judge", "lora"} <= set(registry(proxy).names())


def test_the_best_scored_candidate_is_returned(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    registry(proxy).add("shortest", lambda settings, resources: ShortestFirst())
    fake_upstream.responder = by_variant
    ShortestFirst.calls.clear()
    raw = sdk(proxy, "shortest").chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, user="alice"
    )
    assert raw.parse().choices[0].message.content == "kiwi"
    assert raw.headers["x-persona-rerank-chosen"] == "1"
    assert len(raw.headers["x-persona-rerank-scores"].split(",")) == 4
    candidates, user = ShortestFirst.calls[-1]
    assert len(candidates) == 4 and user == EndUser("tenant-a", "alice")
    sent = fake_upstream.chat_requests
    assert len(sent) == 4
    assert sorted((r.body["messages"][0]["role"], r.body["temperature"]) for r in sent) == sorted(
        [("system", 1.0), ("system", 0.1), ("assistant", 1.0), ("assistant", 0.1)]
    )


def test_scoring_time_is_reported(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    registry(proxy).add("slow", lambda settings, resources: SlowShortest())
    fake_upstream.responder = by_variant
    raw = sdk(proxy, "slow").chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, user="alice"
    )
    assert raw.parse().choices[0].message.content == "kiwi"
    assert 110.0 <= float(raw.headers["x-persona-rerank-ms"]) < 2000.0  # asyncio may wake ~1 ms early
    metrics = httpx.get(f"{proxy.url}/metrics").text
    count = re.search(r'persona_rerank_seconds_count\{reranker="slow"\} ([0-9.]+)', metrics)
    total = re.search(r'persona_rerank_seconds_sum\{reranker="slow"\} ([0-9.]+)', metrics)
    assert count is not None and float(count.group(1)) == 1.0
    assert total is not None and float(total.group(1)) >= 0.11


def test_candidates_that_arrive_early_are_handed_to_the_reranker_before_scoring(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    registry(proxy).add("early", lambda settings, resources: EarlyBird())
    delays = {"kiwi": 0.05, "GOOD banana": 0.25, "a medium answer: grape": 0.45}  # apples and pears: 0.65

    def staggered(body: dict[str, Any]) -> Reply:
        text = str(by_variant(body))
        return Reply(content=text, delay=delays.get(text, 0.65))

    fake_upstream.responder = staggered
    EarlyBird.events.clear()
    raw = sdk(proxy, "early").chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, user="alice"
    )
    assert raw.parse().choices[0].message.content == "kiwi"  # a failed head start changes nothing
    assert EarlyBird.events[:3] == [
        ("prepared", "kiwi"),
        ("prepared", "GOOD banana"),
        ("prepared", "a medium answer: grape"),
    ]  # in the order they arrived; the last one is left to score()
    assert EarlyBird.events[3][0] == "score" and len(EarlyBird.events) == 4


def test_persona_block_goes_with_every_candidate(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    registry(proxy).add("shortest", lambda settings, resources: ShortestFirst())
    httpx.put(f"{proxy.url}/admin/users/alice/persona", json={"text": "Loves kiwis."}, headers=proxy.admin_headers())
    fake_upstream.responder = by_variant
    raw = sdk(proxy, "shortest").chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, user="alice"
    )
    assert raw.headers["x-persona-version"] == "1"
    for request in fake_upstream.chat_requests:
        messages = request.body["messages"]
        assert messages[0]["content"] == "Be helpful."  # the app's instruction stays first
        assert "Loves kiwis." in messages[1]["content"] and messages[1]["role"] == "system"


def test_judge_reranker_end_to_end(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.responder = by_variant
    httpx.put(f"{proxy.url}/admin/users/alice/persona", json={"text": "Likes bananas."}, headers=proxy.admin_headers())
    completion = sdk(proxy, "judge").chat.completions.create(
        model="fake-model", messages=MESSAGES, user="alice"
    )
    assert completion.choices[0].message.content == "GOOD banana"
    judge_calls = [r for r in fake_upstream.chat_requests if "response_format" in r.body]
    assert len(judge_calls) == 12  # 6 pairs, both orders
    assert all("Likes bananas." in r.body["messages"][1]["content"] for r in judge_calls)


def test_judge_scores_with_the_persona_version_that_was_injected(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    """A new persona version stored while the candidates are generated does not reach the judge."""
    admin = httpx.Client(base_url=proxy.url, headers=proxy.admin_headers(), timeout=10)
    admin.put("/admin/users/alice/persona", json={"text": "Likes bananas."}).raise_for_status()
    replaced: list[int] = []

    def replace_persona_midway(body: dict[str, Any]) -> str | dict[str, Any] | None:
        if "response_format" not in body and not replaced:
            reply = admin.put("/admin/users/alice/persona", json={"text": "Hates bananas."})
            replaced.append(reply.json()["version"])
        return by_variant(body)

    fake_upstream.responder = replace_persona_midway
    raw = sdk(proxy, "judge").chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, user="alice"
    )
    assert raw.headers["x-persona-version"] == "1" and replaced == [2]
    judge_calls = [r for r in fake_upstream.chat_requests if "response_format" in r.body]
    assert len(judge_calls) == 12
    prompts = [r.body["messages"][1]["content"] for r in judge_calls]
    assert all("Likes bananas." in p and "Hates bananas." not in p for p in prompts)
    assert raw.parse().choices[0].message.content == "GOOD banana"


def test_scorer_failure_falls_back_to_the_first_candidate(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    registry(proxy).add("broken", lambda settings, resources: Broken())
    fake_upstream.responder = by_variant
    raw = sdk(proxy, "broken").chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES
    )
    assert raw.parse().choices[0].message.content == "a long answer about apples and pears"
    assert raw.headers["x-persona-rerank-fallback"] == "true"
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert "persona_rerank_fallbacks_total 1.0" in metrics


def test_rerank_streams_the_chosen_answer(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    registry(proxy).add("shortest", lambda settings, resources: ShortestFirst())
    fake_upstream.responder = by_variant
    stream = sdk(proxy, "shortest").chat.completions.create(
        model="fake-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "kiwi"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert all("stream" not in r.body for r in fake_upstream.chat_requests)


def test_details_show_scores_and_losing_candidates(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    registry(proxy).add("shortest", lambda settings, resources: ShortestFirst())
    fake_upstream.responder = by_variant
    response = httpx.post(
        f"{proxy.v1}/chat/completions",
        json={"model": "fake-model", "messages": MESSAGES},
        headers={
            "Authorization": f"Bearer {APP_KEY_A}",
            "X-Persona-Mode": "rerank",
            "X-Persona-Reranker": "shortest",
            "X-Persona-Rerank-Details": "true",
        },
    )
    details = response.json()["persona_rerank"]
    assert details["chosen_index"] == 1
    assert [c["content"] for c in details["candidates"]] == [
        "a long answer about apples and pears", "kiwi", "GOOD banana", "a medium answer: grape"
    ]
    assert max(c["score"] for c in details["candidates"]) == details["candidates"][1]["score"]


def test_a_failed_candidate_is_skipped(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    from tests.support.fake_upstream import Reply

    registry(proxy).add("shortest", lambda settings, resources: ShortestFirst())

    def responder(body: dict[str, Any]) -> Any:
        if body["temperature"] == 0.1 and body["messages"][0]["role"] == "system":
            return Reply(status=400, error_message="bad variant")
        return by_variant(body)

    fake_upstream.responder = responder
    completion = sdk(proxy, "shortest").chat.completions.create(model="fake-model", messages=MESSAGES)
    assert completion.choices[0].message.content == "GOOD banana"  # kiwi failed; next shortest


def test_rerank_answers_with_the_chat_headers_and_metrics(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    """Rerank goes through the same answer path as a plain chat: persona headers, overhead, outcome."""
    registry(proxy).add("shortest", lambda settings, resources: ShortestFirst())
    fake_upstream.responder = by_variant
    raw = sdk(proxy, "shortest").chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, user="alice"
    )
    assert raw.headers["x-persona-version"] == "none" and raw.headers["x-persona-reranker"] == "shortest"
    overhead_ms = float(raw.headers["x-persona-overhead-ms"])
    assert sample(proxy.url, "persona_overhead_seconds_count") == 1.0
    assert sample(proxy.url, "persona_overhead_seconds_sum") * 1000.0 == pytest.approx(overhead_ms, abs=0.001)
    assert sample(proxy.url, "persona_chat_requests_total", mode="rerank", outcome="ok") == 1.0

    fake_upstream.responder = lambda body: Reply(status=400, error_message="every variant refused")
    with pytest.raises(openai.BadRequestError):
        sdk(proxy, "shortest").chat.completions.create(model="fake-model", messages=MESSAGES)
    assert sample(proxy.url, "persona_chat_requests_total", mode="rerank", outcome="error") == 1.0
    assert sample(proxy.url, "persona_overhead_seconds_count") == 2.0


class MeddlesWithRedis(ShortestFirst):
    """Scores as ShortestFirst, once a Redis command of the test's has run (the call is admitted by
    then, and its answer is about to go back)."""

    def __init__(self, redis_url: str, *command: str | int) -> None:
        self._redis_url, self._command = redis_url, command

    async def score(
        self, context: Sequence[dict[str, Any]], candidates: Sequence[str], *, user: EndUser | None
    ) -> list[float]:
        async with AsyncRedis.from_url(self._redis_url) as client:
            await client.execute_command(*self._command)
        return await super().score(context, candidates, user=user)


def tokens_today(redis_url: str) -> int:
    with redis.Redis.from_url(redis_url) as client:
        return int(cast(Any, client.get(keys.tokens_day("tenant-a", utc_day(time.time())[0]))) or 0)


def test_a_rerank_answers_before_its_tokens_are_written_and_they_count_after(
    redis_url: str, fake_upstream: FakeUpstream
) -> None:
    """Every candidate's tokens are written behind the answer with the call's slot: an answer never
    waits for them, and a Redis that cannot write (paused, or failing the write) costs no answer."""
    settings = proxy_settings(
        redis_url,
        fake_upstream,
        rerankers_enabled=["shortest", "paused", "failing"],
        limits={"default": {"tokens_per_day": 10**6}},
        persona_read_timeout_s=2.0,  # a loaded machine must not skip the admission
        redis_socket_timeout_s=10.0,  # the writes wait out the pause below rather than give up
    )
    day_key = keys.tokens_day("tenant-a", utc_day(time.time())[0])
    with start_proxy(settings) as proxy:
        registry(proxy).add("shortest", lambda settings, resources: ShortestFirst())
        # writes paused from scoring on (reads still served); unpaused by the test below
        registry(proxy).add(
            "paused",
            lambda settings, resources: MeddlesWithRedis(redis_url, "CLIENT", "PAUSE", 20_000, "WRITE"),
        )
        # the day's key made a hash: the write behind the answer fails
        as_hash = "redis.call('DEL', KEYS[1]); return redis.call('HSET', KEYS[1], 'x', '1')"
        registry(proxy).add(
            "failing", lambda settings, resources: MeddlesWithRedis(redis_url, "EVAL", as_hash, 1, day_key)
        )
        fake_upstream.responder = by_variant

        def ask(reranker: str) -> ChatCompletion:
            api = sdk(proxy, reranker).with_options(timeout=5)
            return api.chat.completions.create(model="fake-model", messages=MESSAGES)

        first = ask("shortest")
        assert first.choices[0].message.content == "kiwi" and first.usage is not None
        wait_for(lambda: tokens_today(redis_url) > 0, 5, "the first rerank's tokens")
        one_rerank = tokens_today(redis_url)  # every candidate's tokens, counted in one write
        assert one_rerank > first.usage.total_tokens  # more than the chosen one's

        try:
            assert ask("paused").choices[0].message.content == "kiwi"
            assert tokens_today(redis_url) == one_rerank  # answered while the write still waits
        finally:
            with redis.Redis.from_url(redis_url) as client:
                client.execute_command("CLIENT", "UNPAUSE")
        wait_for(lambda: tokens_today(redis_url) > one_rerank, 5, "the paused rerank's tokens")
        assert tokens_today(redis_url) == 2 * one_rerank

        assert sample(proxy.url, "persona_store_write_failures_total") == 0.0
        # the chosen answer, not the first candidate's: the scorer ran, and the answer stands
        assert ask("failing").choices[0].message.content == "kiwi"
        wait_for(lambda: sample(proxy.url, "persona_store_write_failures_total") > 0, 5, "the lost write")


async def test_a_slow_reranker_build_runs_once_and_off_the_event_loop() -> None:
    import threading
    import time as clock

    builds: list[tuple[int, float, float]] = []

    def slow_factory(settings: Any, resources: Any) -> ShortestFirst:
        started = clock.monotonic()
        clock.sleep(0.3)  # loading a model
        builds.append((threading.get_ident(), started, clock.monotonic()))
        return ShortestFirst()

    registry = RerankerRegistry(settings=cast(Any, None), resources=cast(Any, None))
    registry.add("slow", slow_factory)
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(20):
            await asyncio.sleep(0.01)
            ticks.append(clock.monotonic())

    first, second, _ = await asyncio.gather(registry.aget("slow"), registry.aget("slow"), ticker())
    assert first is second and len(builds) == 1
    thread, began, ended = builds[0]
    assert thread != threading.get_ident()  # built in a worker thread
    assert sum(began < t < ended for t in ticks) >= 5  # the loop kept running during the build
    assert await registry.aget("slow") is first
    with pytest.raises(Exception, match="unknown reranker"):
        await registry.aget("missing")
