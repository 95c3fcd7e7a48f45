"""Addressable answers and POST /v1/feedback: records, signals, rewards, implied pairs, errors, forget."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis

from middleware.config import Settings
from middleware.feedback.signals import FeedbackService, SignalIn
from middleware.store import keys
from middleware.store.feedback import FeedbackStore
from middleware.store.preferences import PreferenceStore
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import (
    APP_KEY_A,
    APP_KEY_B,
    RunningProxy,
    admin_client,
    app_client,
    proxy_settings,
    start_proxy,
    user_token,
)
from tests.support.redis_server import RedisServer
from tests.support.stored import stored_records

RID = "x-persona-response-id"


@pytest.fixture
def keeping(redis_url: str, fake_upstream: FakeUpstream) -> Iterator[RunningProxy]:
    """A proxy that keeps the texts (implied pairs need them)."""
    with start_proxy(proxy_settings(redis_url, fake_upstream, feedback_keep_text=True)) as running:
        yield running


def sdk(proxy: RunningProxy, user: str = "alice", key: str = APP_KEY_A) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy.v1, api_key=key, max_retries=0, default_headers={"X-Persona-User": user}
    )


def ask(proxy: RunningProxy, prompt: str = "hello", *, user: str = "alice", stream: bool = False) -> str:
    """One chat answer through the official SDK; its x-persona-response-id."""
    client = sdk(proxy, user)
    messages: Any = [{"role": "user", "content": prompt}]
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="fake-model", messages=messages, stream=True
        ) as raw:
            for _ in raw.iter_lines():
                pass
            return raw.headers[RID]
    plain = client.chat.completions.with_raw_response.create(model="fake-model", messages=messages)
    plain.parse()
    return plain.headers[RID]


def record(
    proxy: RunningProxy, response_id: str, tenant: str = "tenant-a", user: str = "alice"
) -> dict[str, Any]:
    """The answer's stored record (written in the background: awaited, never slept for)."""
    r = redis.Redis.from_url(proxy.settings.redis_url)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            raw = r.hget(keys.feedback(tenant, user, response_id), "record")
            if raw is not None:
                found: dict[str, Any] = orjson.loads(raw)  # type: ignore[arg-type]
                return found
            time.sleep(0.01)
    finally:
        r.close()
    raise AssertionError(f"no record for {response_id}")


def send(client: httpx.Client, body: Any, **headers: str) -> httpx.Response:
    return client.post("/v1/feedback", json=body, headers=headers)


def test_chat_answers_carry_an_id_and_a_record(keeping: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content="plain answer"), Reply(content="streamed answer"))
    plain = ask(keeping, "what is two plus two?")
    streamed = ask(keeping, "and three?", stream=True)
    assert plain.startswith("pmr_") and streamed.startswith("pmr_") and plain != streamed
    one, two = record(keeping, plain), record(keeping, streamed)
    assert one["tenant"] == "tenant-a" and one["user"] == "alice" and one["arm"] == "inject"
    assert one["persona_source"] == "none" and one["persona_version"] is None
    assert one["prompt"] == "what is two plus two?" and one["answer"] == "plain answer"
    assert two["prompt"] == "and three?" and two["answer"] == "streamed answer"
    assert one["prompt_digest"] != two["prompt_digest"] and len(one["prompt_digest"]) == 32
    ttl = redis.Redis.from_url(keeping.settings.redis_url).ttl(keys.feedback("tenant-a", "alice", plain))
    assert 0 < int(ttl) <= 7 * 24 * 3600  # type: ignore[arg-type]


def test_texts_are_not_kept_by_default(proxy: RunningProxy) -> None:
    found = record(proxy, ask(proxy, "secret question"))
    assert "prompt" not in found and "answer" not in found
    assert found["prompt_digest"]
    found = record(proxy, ask(proxy, "streamed secret", stream=True))
    assert "answer" not in found


def test_mode_off_is_the_arm_and_answers_without_user_have_an_id(proxy: RunningProxy) -> None:
    client = sdk(proxy)
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=[{"role": "user", "content": "x"}],
        extra_headers={"X-Persona-Mode": "off"},
    )
    assert record(proxy, raw.headers[RID])["arm"] == "off"
    anonymous = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
    raw = anonymous.chat.completions.with_raw_response.create(
        model="fake-model", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers[RID].startswith("pmr_")
    with app_client(proxy) as c:  # no user: nothing to give feedback on
        assert send(c, {"response_id": raw.headers[RID], "signal": "thumbs_up"}).status_code == 404


def test_every_signal_moves_the_reward_and_counts_once(keeping: RunningProxy) -> None:
    expected = {
        "thumbs_up": 1.0,
        "thumbs_down": 0.0,
        "regenerate": 0.2,
        "copy": 0.7,
        "edit": 0.4,
        "dwell": 0.55,  # 15 s of 30: 0.5 + 0.5 * 0.2 * 0.5
    }
    with app_client(keeping) as c:
        for i, (signal, reward) in enumerate(expected.items()):
            rid = ask(keeping, f"prompt {i}")
            record(keeping, rid)
            body: dict[str, Any] = {"response_id": rid, "signal": signal}
            if signal == "dwell":
                body["value"] = 15
            if signal == "edit":
                body["text"] = "a better answer"
            first = send(c, body)
            assert first.status_code == 201, first.text
            [item] = first.json()["data"]
            assert item["created"] is True and item["reward"] == pytest.approx(reward), signal
            again = send(c, body)  # a retry counts once
            assert again.status_code == 200 and again.json()["data"][0]["created"] is False
            assert again.json()["data"][0]["reward"] == pytest.approx(reward)
        # follow_up: scored for sentiment, smoothed (first follow-up: 0.3 of its score)
        rid = ask(keeping, "follow me")
        record(keeping, rid)
        happy = send(c, {"response_id": rid, "signal": "follow_up", "text": "Thanks, that is perfect!"})
        assert happy.status_code == 201
        assert 0.5 < happy.json()["data"][0]["reward"] < 0.6


def test_batch_and_idempotency_key(keeping: RunningProxy) -> None:
    one, two = ask(keeping, "a"), ask(keeping, "b")
    record(keeping, one), record(keeping, two)
    with app_client(keeping) as c:
        batch = [
            {"response_id": one, "signal": "copy", "idempotency_key": "k1"},
            {"response_id": two, "signal": "thumbs_down"},
        ]
        response = send(c, batch)
        assert response.status_code == 201 and response.json()["created"] == 2
        # the same key with other content is the same signal
        again = send(c, [{"response_id": one, "signal": "copy", "text": "changed", "idempotency_key": "k1"}])
        assert again.json()["created"] == 0
        # a batch with an unknown answer stores nothing
        bad = send(
            c, [{"response_id": one, "signal": "thumbs_up"}, {"response_id": "pmr_nope", "signal": "copy"}]
        )
        assert bad.status_code == 404
        assert send(c, {"response_id": one, "signal": "thumbs_up"}).status_code == 201


def test_errors(redis_url: str, fake_upstream: FakeUpstream) -> None:
    settings = proxy_settings(redis_url, fake_upstream, feedback_signals=["thumbs_up", "follow_up", "dwell"])
    with start_proxy(settings) as proxy:
        rid = ask(proxy)
        record(proxy, rid)
        with app_client(proxy) as a, app_client(proxy, APP_KEY_B) as b:
            missing = send(a, {"response_id": "pmr_0000", "signal": "thumbs_up"})
            assert missing.status_code == 404 and missing.json()["error"]["param"] == "response_id"
            assert send(b, {"response_id": rid, "signal": "thumbs_up"}).status_code == 404  # other tenant
            other_user = send(a, {"response_id": rid, "signal": "thumbs_up"}, **{"X-Persona-User": "bob"})
            assert other_user.status_code == 404
            disabled = send(a, {"response_id": rid, "signal": "thumbs_down"})
            assert disabled.status_code == 422 and "not enabled" in disabled.json()["error"]["message"]
            assert send(a, {"response_id": rid, "signal": "sparkles"}).status_code == 422
            assert send(a, {"response_id": rid, "signal": "follow_up"}).status_code == 422  # no text
            assert send(a, {"response_id": rid, "signal": "dwell"}).status_code == 422  # no value
            assert send(a, {"response_id": rid, "signal": "thumbs_up", "extra": 1}).status_code == 422
            assert send(a, []).status_code == 422
            assert (
                send(
                    a, {"response_id": rid, "signal": "thumbs_up"}, **{"X-Persona-User": "alice"}
                ).status_code
                == 201
            )
        # end-user tokens: their own answers only
        alice, bob = user_token(proxy, "alice"), user_token(proxy, "bob")
        with httpx.Client(base_url=proxy.url, timeout=10) as c:
            mine = send(
                c, {"response_id": rid, "signal": "dwell", "value": 3}, Authorization=f"Bearer {alice}"
            )
            assert mine.status_code == 201, mine.text
            theirs = send(
                c, {"response_id": rid, "signal": "dwell", "value": 4}, Authorization=f"Bearer {bob}"
            )
            assert theirs.status_code == 404
            assert send(c, {"response_id": rid, "signal": "thumbs_up"}).status_code == 401


def test_redis_down_is_a_503_that_says_a_retry_is_safe(
    fresh_redis: RedisServer, fake_upstream: FakeUpstream
) -> None:
    settings = proxy_settings(fresh_redis.url, fake_upstream, redis_socket_timeout_s=0.3)
    with start_proxy(settings) as proxy, app_client(proxy) as c:
        rid = ask(proxy)
        record(proxy, rid)
        body = {"response_id": rid, "signal": "thumbs_up", "idempotency_key": "once"}
        with fresh_redis.while_paused():
            down = send(c, body)
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "store_unavailable"
        assert "retrying the same request is safe" in down.json()["error"]["message"]
        retried = send(c, body)
        assert retried.status_code in (200, 201)
        assert retried.json()["data"][0]["reward"] == 1.0


def implicit(proxy: RunningProxy, user: str = "alice") -> list[dict[str, Any]]:
    return [
        p for p in stored_records(proxy.settings.redis_url, "tenant-a", user) if p.get("source") == "implicit"
    ]


def test_edit_implies_edited_over_answer(keeping: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content="A long winded answer."))
    rid = ask(keeping, "summarise this")
    record(keeping, rid)
    with app_client(keeping) as c:
        response = send(c, {"response_id": rid, "signal": "edit", "text": "Short answer."})
        assert response.json()["data"][0]["implied_pairs"] == 1
        assert send(c, {"response_id": rid, "signal": "edit", "text": "Short answer."}).json()["created"] == 0
    [pair] = implicit(keeping)
    assert (
        pair["chosen"]["content"] == "Short answer."
        and pair["rejected"]["content"] == "A long winded answer."
    )
    assert pair["context"] == [{"role": "user", "content": "summarise this"}]
    assert pair["weight"] == 0.5 and pair["source"] == "implicit"


def test_regenerate_then_thumbs_up_implies_new_over_old(
    keeping: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(Reply(content="old answer"), Reply(content="new answer"), Reply(content="other"))
    old = ask(keeping, "write a haiku")
    record(keeping, old)
    with app_client(keeping) as c:
        assert send(c, {"response_id": old, "signal": "regenerate"}).json()["data"][0]["implied_pairs"] == 0
        new = ask(keeping, "write a haiku")  # the same conversation again
        record(keeping, new)
        other = ask(keeping, "another prompt")
        record(keeping, other)
        assert send(c, {"response_id": other, "signal": "thumbs_up"}).json()["data"][0]["implied_pairs"] == 0
        liked = send(c, {"response_id": new, "signal": "thumbs_up"})
        assert liked.json()["data"][0]["implied_pairs"] == 1
    [pair] = implicit(keeping)
    assert (pair["chosen"]["content"], pair["rejected"]["content"]) == ("new answer", "old answer")
    assert pair["weight"] == keeping.settings.feedback_implicit_weight


def test_thumbs_up_and_down_on_the_same_prompt(keeping: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content="good one"), Reply(content="bad one"))
    good, bad = ask(keeping, "same prompt"), ask(keeping, "same prompt", stream=True)
    record(keeping, good), record(keeping, bad)
    with app_client(keeping) as c:
        send(c, {"response_id": bad, "signal": "thumbs_down"})
        assert send(c, {"response_id": good, "signal": "thumbs_up"}).json()["data"][0]["implied_pairs"] == 1
    [pair] = implicit(keeping)
    assert (pair["chosen"]["content"], pair["rejected"]["content"]) == ("good one", "bad one")


def posteriors(proxy: RunningProxy, user: str = "alice") -> dict[str, float]:
    """The user's posterior hash of the auto mode's policy, as numbers."""
    r = redis.Redis.from_url(proxy.settings.redis_url)
    try:
        raw = r.hgetall(keys.policy_user("tenant-a", user))
    finally:
        r.close()
    return {k.decode(): float(v) for k, v in raw.items()}  # type: ignore[union-attr]


def pairs_shown(proxy: RunningProxy) -> list[tuple[str, str]]:
    return [(p["chosen"]["content"], p["rejected"]["content"]) for p in implicit(proxy)]


def test_a_changed_verdict_counts_only_the_latest(keeping: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(content="first one"), Reply(content="second one"))
    first, second = ask(keeping, "same prompt"), ask(keeping, "same prompt")
    record(keeping, first), record(keeping, second)
    with app_client(keeping) as c:
        send(c, {"response_id": second, "signal": "thumbs_down"})
        up = send(c, {"response_id": first, "signal": "thumbs_up"}).json()["data"][0]
        assert up["reward"] == 1.0 and up["implied_pairs"] == 1
        assert pairs_shown(keeping) == [("first one", "second one")]

        # up, then down on the same answer: the reward of a down, and no pair left from the up
        down = send(c, {"response_id": first, "signal": "thumbs_down"})
        assert down.status_code == 201 and down.json()["data"][0]["reward"] == 0.0
        assert pairs_shown(keeping) == []
        # two answers rewarded once each (the latest verdicts: two downs), not three rewards
        stats = posteriors(keeping)
        assert stats["inject:n"] == 2 and stats["inject:r"] == pytest.approx(0.0)
        assert stats["inject:s"] == pytest.approx(0.0) and stats["inject:f"] > 1.9

        # down, then up on the other answer: the pair follows the latest verdicts
        again = send(c, {"response_id": second, "signal": "thumbs_up"}).json()["data"][0]
        assert again["reward"] == 1.0 and again["implied_pairs"] == 1
        assert pairs_shown(keeping) == [("second one", "first one")]
        stats = posteriors(keeping)
        assert stats["inject:n"] == 2 and stats["inject:r"] == pytest.approx(1.0)

        # the first verdict sent again (no idempotency key) is the latest once more
        back = send(c, {"response_id": first, "signal": "thumbs_up"}).json()["data"][0]
        assert back["created"] is True and back["reward"] == 1.0
        assert pairs_shown(keeping) == []  # both up: neither is preferred
        assert send(c, {"response_id": first, "signal": "thumbs_up"}).json()["created"] == 0  # a retry
    stats = posteriors(keeping)
    assert stats["inject:n"] == 2 and stats["inject:r"] == pytest.approx(2.0)


def test_a_retried_verdict_does_not_undo_a_later_one(keeping: RunningProxy) -> None:
    rid = ask(keeping, "keyed")
    record(keeping, rid)
    with app_client(keeping) as c:
        up = {"response_id": rid, "signal": "thumbs_up", "idempotency_key": "up-1"}
        down = {"response_id": rid, "signal": "thumbs_down", "idempotency_key": "down-1"}
        assert send(c, up).json()["data"][0]["reward"] == 1.0
        assert send(c, down).json()["data"][0]["reward"] == 0.0
        late = send(c, up)  # the first request retried after the second one: still the same signal
        item = late.json()["data"][0]
        assert late.status_code == 200 and (item["created"], item["reward"]) == (False, 0.0)
        assert send(c, down).json()["created"] == 0
    stats = posteriors(keeping)
    assert stats["inject:n"] == 1 and stats["inject:r"] == pytest.approx(0.0)
    assert stats["inject:s"] == pytest.approx(0.0) and stats["inject:f"] == pytest.approx(1.0)


def test_no_pairs_without_kept_texts(proxy: RunningProxy) -> None:
    rid = ask(proxy, "x")
    record(proxy, rid)
    with app_client(proxy) as c:
        assert (
            send(c, {"response_id": rid, "signal": "edit", "text": "y"}).json()["data"][0]["implied_pairs"]
            == 0
        )
    assert implicit(proxy) == []


def test_forget_and_export_cover_feedback(keeping: RunningProxy) -> None:
    rid = ask(keeping, "remember me")
    record(keeping, rid)
    with app_client(keeping) as c:
        send(c, {"response_id": rid, "signal": "follow_up", "text": "great"})
    with admin_client(keeping) as admin:
        exported = admin.get("/admin/users/alice/export").json()
        assert (
            exported["feedback"][rid]["record"]["answer"] and exported["feedback"][rid]["reward"] is not None
        )
        forgotten = admin.delete("/admin/users/alice")
        assert forgotten.status_code == 200, forgotten.text
        assert forgotten.json()["deleted_feedback_records"] == 1
    r = redis.Redis.from_url(keeping.settings.redis_url)
    assert not r.exists(
        keys.feedback("tenant-a", "alice", rid), keys.feedback_owner(rid), keys.sentiment("tenant-a", "alice")
    )
    with app_client(keeping) as c:
        assert send(c, {"response_id": rid, "signal": "thumbs_up"}).status_code == 404


async def test_sentiment_is_smoothed_and_reward_changes_reach_the_hook(redis_url: str) -> None:
    from redis.asyncio import Redis

    settings = Settings(redis_url=redis_url, feedback_keep_text=True)
    client = Redis.from_url(redis_url)
    store = FeedbackStore(client, ttl_s=600)
    calls: list[tuple[str, str, str, float]] = []

    async def hook(tenant: str, user: str, arm: str, reward: float, previous: float | None = None) -> None:
        calls.append((tenant, user, arm, reward))

    service = FeedbackService(settings, store, PreferenceStore(client), hook)
    user = f"smooth-{time.monotonic_ns()}"
    rewards = []
    for i in range(8):
        rid = f"pmr_s{i}_{user}"
        records = [("t", user, rid, orjson.dumps({"arm": "rerank:judge", "prompt_digest": f"d{i}"}))]
        store.write_later(records.copy)
        await store.drain()
        text = "I love it, wonderful, thank you!" if i < 7 else "This is terrible, awful, useless garbage!"
        [result] = await service.send("t", None, [SignalIn(response_id=rid, signal="follow_up", text=text)])
        rewards.append(result.reward)
    ewma, n = await store.sentiment("t", user)
    assert n == 8
    # Seven happy follow-ups lift the mood; one outburst lowers it but does not turn it negative.
    assert rewards[0] is not None and rewards[6] is not None and rewards[7] is not None
    assert rewards[6] > rewards[0] > 0.5
    assert 0.5 < rewards[7] < rewards[6] and ewma > 0
    assert [c[:3] for c in calls] == [("t", user, "rerank:judge")] * 8
    assert [c[3] for c in calls] == rewards
    await client.aclose()


def test_sdk_feedback_send(keeping: RunningProxy) -> None:
    from middleware.sdk import PersonalizedOpenAI

    client = PersonalizedOpenAI(base_url=keeping.v1, api_key=APP_KEY_A, user="sdk-user", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=[{"role": "user", "content": "hi"}]
    )
    rid = raw.headers[RID]
    record(keeping, rid, user="sdk-user")
    sent = client.feedback.send(rid, "thumbs_up")
    assert sent.created == 1 and sent.reward == 1.0
    batch = client.feedback.send(items=[{"response_id": rid, "signal": "dwell", "value": 60}])
    assert batch.created == 1 and batch.reward == 1.0  # clipped to [0, 1]
    with pytest.raises(openai.NotFoundError):
        client.feedback.send("pmr_unknown", "copy")
    other = PersonalizedOpenAI(base_url=keeping.v1, api_key=APP_KEY_A, user="someone-else", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.feedback.send(rid, "copy")


async def test_records_of_answers_finishing_together_are_all_written(redis_url: str) -> None:
    from redis.asyncio import Redis

    from middleware.feedback.answers import FeedbackRecorder

    client = Redis.from_url(redis_url)
    recorder = FeedbackRecorder(FeedbackStore(client, ttl_s=600), Settings(redis_url=redis_url))
    user = f"batch-{time.monotonic_ns()}"
    messages = [{"role": "user", "content": "q"}]
    pending = [
        recorder.open(
            "t", user, persona_version=None, persona_source="none", arm="off", model="m", prompt=messages
        )
        for _ in range(20)
    ]
    for answer in pending:
        answer.finish(b'{"choices": [{"message": {"content": "a"}}]}')
    await recorder.drain()
    found = [await client.hget(keys.feedback("t", user, p.response_id), "record") for p in pending]
    assert all(found) and len({p.response_id for p in pending}) == 20
    assert {orjson.loads(r)["arm"] for r in found if r} == {"off"}
    await client.aclose()


@pytest.fixture
def all_apis(redis_url: str, fake_upstream: FakeUpstream) -> Iterator[RunningProxy]:
    """Keeping the texts, with an Anthropic-compatible base for /v1/messages."""
    settings = proxy_settings(
        redis_url, fake_upstream, feedback_keep_text=True, anthropic_api_base=fake_upstream.root_url
    )
    with start_proxy(settings) as running:
        yield running


def test_responses_answers_carry_an_id_and_a_record(all_apis: RunningProxy) -> None:
    client = sdk(all_apis, "resp-user")
    raw = client.responses.with_raw_response.create(model="fake-model", input="responses question")
    plain = raw.parse()
    found = record(all_apis, raw.headers[RID], user="resp-user")
    assert found["prompt"] == "responses question" and found["answer"] == plain.output_text
    assert found["arm"] == "inject" and found["answer"]
    with client.responses.with_streaming_response.create(
        model="fake-model", input=[{"role": "user", "content": "streamed responses question"}], stream=True
    ) as streamed:
        for _ in streamed.iter_lines():
            pass
        rid = streamed.headers[RID]
    found = record(all_apis, rid, user="resp-user")
    assert found["prompt"] == "streamed responses question" and found["answer"]
    with app_client(all_apis) as c:
        assert send(c, {"response_id": rid, "signal": "thumbs_up"}).json()["data"][0]["reward"] == 1.0


def test_messages_answers_carry_an_id_and_a_record(all_apis: RunningProxy) -> None:
    import anthropic

    client = anthropic.Anthropic(
        base_url=all_apis.url,
        api_key=APP_KEY_A,
        max_retries=0,
        default_headers={"X-Persona-User": "claude-user"},
    )
    messages: Any = [{"role": "user", "content": "messages question"}]
    raw = client.messages.with_raw_response.create(model="claude-fake", max_tokens=50, messages=messages)
    reply = raw.parse()
    found = record(all_apis, raw.headers[RID], user="claude-user")
    assert found["prompt"] == "messages question"
    assert found["answer"] == "".join(b.text for b in reply.content if b.type == "text")
    with client.messages.with_streaming_response.create(
        model="claude-fake",
        max_tokens=50,
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
    ) as streamed:
        for _ in streamed.iter_lines():
            pass
        rid = streamed.headers[RID]
    found = record(all_apis, rid, user="claude-user")
    assert found["prompt"] == "stream please" and found["answer"] == "fake answer to: stream please"
    with app_client(all_apis) as c:
        assert send(c, {"response_id": rid, "signal": "thumbs_down"}).json()["data"][0]["reward"] == 0.0


def test_the_record_names_the_persona_version_and_source(proxy: RunningProxy) -> None:
    with admin_client(proxy) as admin:
        admin.put("/admin/users/pia/persona", json={"text": "Likes lists."}).raise_for_status()
    found = record(proxy, ask(proxy, "q", user="pia"), user="pia")
    assert found["persona_version"] == 1 and found["persona_source"] == "user"
