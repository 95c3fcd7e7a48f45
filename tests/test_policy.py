"""X-Persona-Mode: auto — a Thompson-sampling policy per user picks the arm; rewards update it in Redis."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
import redis

from middleware.store import keys
from tests.support.fake_upstream import FakeUpstream
from tests.support.metrics import sample
from tests.support.processes import process_env, serving
from tests.support.proxy import (
    ADMIN_KEY,
    APP_KEY_A,
    APP_KEY_B,
    RunningProxy,
    admin_client,
    proxy_settings,
    start_proxy,
)

PERSONA = {
    "text": "Likes answers in metric units.",
    "exemplars": [
        {
            "context": [{"role": "user", "content": "How far?"}],
            "chosen": {"role": "assistant", "content": "EXEMPLAR-CHOSEN five km"},
            "rejected": {"role": "assistant", "content": "three miles"},
        }
    ],
}
QUESTION = [{"role": "user", "content": "How tall is it?"}]


def policy(arms: list[str], **fields: Any) -> dict[str, Any]:
    return {"default": {"arms": arms, **fields}}


@contextmanager
def running(
    redis_url: str, upstream: FakeUpstream, arms: list[str], **overrides: Any
) -> Iterator[RunningProxy]:
    overrides.setdefault("policy", policy(arms))
    with start_proxy(proxy_settings(redis_url, upstream, **overrides)) as proxy:
        yield proxy


def client(proxy: RunningProxy, key: str = APP_KEY_A, mode: str | None = "auto") -> openai.OpenAI:
    headers = {"X-Persona-Mode": mode} if mode else {}
    return openai.OpenAI(base_url=proxy.v1, api_key=key, max_retries=0, default_headers=headers)


def ask(sdk: openai.OpenAI, user: str) -> str | None:
    """The arm the proxy chose for one chat call (its x-persona-arm header)."""
    raw = sdk.chat.completions.with_raw_response.create(model="fake-model", messages=QUESTION, user=user)  # type: ignore[arg-type]
    assert raw.parse().choices
    arm: str | None = raw.headers.get("x-persona-arm")
    return arm


def sent_system_text(upstream: FakeUpstream) -> str:
    messages = upstream.chat_requests[-1].body["messages"]
    return "\n".join(m["content"] for m in messages if m["role"] == "system")


def put_persona(proxy: RunningProxy, user: str, tenant: str = "tenant-a") -> None:
    with admin_client(proxy, tenant) as http:
        assert http.put(f"/admin/users/{user}/persona", json=PERSONA).status_code == 200


def reward(http: httpx.Client, user: str, arm: str, value: float) -> httpx.Response:
    return http.post(f"/admin/users/{user}/policy/rewards", json={"arm": arm, "reward": value})


def test_each_arm_shapes_the_request_and_is_reported(redis_url: str, fake_upstream: FakeUpstream) -> None:
    seen: dict[str, str] = {}
    for arm in ("off", "inject", "inject-no-exemplars"):
        with running(redis_url, fake_upstream, [arm]) as proxy:
            put_persona(proxy, "ann")
            header = ask(client(proxy), "ann")
            assert header == arm
            seen[arm] = sent_system_text(fake_upstream)
            assert sample(proxy.url, "persona_policy_arm_total", arm=arm) == 1.0
    assert "metric units" not in seen["off"]
    assert "metric units" in seen["inject"] and "EXEMPLAR-CHOSEN" in seen["inject"]
    assert (
        "metric units" in seen["inject-no-exemplars"] and "EXEMPLAR-CHOSEN" not in seen["inject-no-exemplars"]
    )


def test_a_rerank_arm_reranks_with_the_reranker_it_names(redis_url: str, fake_upstream: FakeUpstream) -> None:
    class Shortest:
        async def score(self, context: Any, candidates: Any, *, user: Any) -> list[float]:
            return [-float(len(c)) for c in candidates]

    with running(
        redis_url, fake_upstream, ["rerank:shortest"], rerankers_enabled=["judge", "shortest"]
    ) as proxy:
        proxy.services.rerankers.add("shortest", lambda settings, resources: Shortest())
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="fake-model",
            messages=QUESTION,  # type: ignore[arg-type]
            user="ann",
        )
        assert raw.headers["x-persona-arm"] == "rerank:shortest"
        assert raw.headers["x-persona-reranker"] == "shortest"
        assert len(fake_upstream.chat_requests) == 4


def test_a_rerank_arm_whose_reranker_is_not_enabled_is_never_chosen(
    redis_url: str, fake_upstream: FakeUpstream
) -> None:
    with running(redis_url, fake_upstream, ["rerank:lora", "off"]) as proxy:
        # 30 draws: were the disabled arm eligible, all 30 would land on "off" about once in 10^9
        assert {ask(client(proxy), "ann") for _ in range(30)} == {"off"}


def test_responses_and_messages_choose_among_the_arms_they_can_run(
    redis_url: str, fake_upstream: FakeUpstream
) -> None:
    arms = ["rerank:judge", "inject-no-exemplars"]  # no rerank on these routes: one arm left
    with running(redis_url, fake_upstream, arms, anthropic_api_base=fake_upstream.root_url) as proxy:
        put_persona(proxy, "ann")
        raw = client(proxy).responses.with_raw_response.create(
            model="fake-model", input="hi", extra_headers={"X-Persona-User": "ann"}
        )
        assert raw.parse().id and raw.headers["x-persona-arm"] == "inject-no-exemplars"
        instructions = fake_upstream.requests[-1].body["instructions"]
        assert "metric units" in instructions and "EXEMPLAR-CHOSEN" not in instructions
        anthropic_sdk = anthropic.Anthropic(base_url=proxy.url, api_key=APP_KEY_A, max_retries=0)
        message = anthropic_sdk.messages.with_raw_response.create(
            model="claude-test",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Persona-User": "ann", "X-Persona-Mode": "auto"},
        )
        assert message.parse().content and message.headers["x-persona-arm"] == "inject-no-exemplars"
        system = str([r for r in fake_upstream.requests if r.path.endswith("/messages")][-1].body["system"])
        assert "metric units" in system and "EXEMPLAR-CHOSEN" not in system


def test_the_tenant_default_mode_applies_without_the_header(
    redis_url: str, fake_upstream: FakeUpstream
) -> None:
    config = {"default": {"mode": "inject"}, "tenants": {"tenant-a": {"mode": "auto", "arms": ["off"]}}}
    with running(redis_url, fake_upstream, [], policy=config) as proxy:
        put_persona(proxy, "ann")
        put_persona(proxy, "ann", tenant="tenant-b")
        assert ask(client(proxy, mode=None), "ann") == "off"
        assert "metric units" not in sent_system_text(fake_upstream)
        assert ask(client(proxy, APP_KEY_B, mode=None), "ann") is None  # tenant-b: inject, no policy
        assert "metric units" in sent_system_text(fake_upstream)
        assert ask(client(proxy, mode="inject"), "ann") is None  # the header wins over the default


def test_rewards_update_the_posteriors_with_the_discount(redis_url: str, fake_upstream: FakeUpstream) -> None:
    config = policy(["off", "inject"], discount=0.5, tenant_discount=1.0, prior_strength=0)
    with running(redis_url, fake_upstream, [], policy=config) as proxy, admin_client(proxy) as http:
        assert reward(http, "bea", "inject", 1.0).status_code == 200
        assert reward(http, "bea", "off", 0.25).status_code == 200
        shown = http.get("/admin/users/bea/policy").json()["arms"]
        # inject: 1 success, halved by the second reward; off: 0.25 and 0.75 on Beta(1, 1)
        assert shown["inject"]["alpha"] == pytest.approx(1.5) and shown["inject"]["beta"] == pytest.approx(
            1.0
        )
        assert shown["off"]["alpha"] == pytest.approx(1.25) and shown["off"]["beta"] == pytest.approx(1.75)
        assert (shown["inject"]["pulls"], shown["off"]["pulls"]) == (1, 1)
        assert shown["off"]["mean_reward"] == pytest.approx(0.25)
        tenant = http.get("/admin/policy").json()["arms"]  # tenant_discount 1: nothing decays
        assert tenant["inject"]["alpha"] == pytest.approx(2.0) and tenant["off"]["beta"] == pytest.approx(
            1.75
        )


def test_a_changed_reward_replaces_the_old_one(redis_url: str, fake_upstream: FakeUpstream) -> None:
    config = policy(["off", "inject"], discount=0.5, tenant_discount=1.0, prior_strength=0)
    with running(redis_url, fake_upstream, [], policy=config) as proxy, admin_client(proxy) as http:
        assert reward(http, "ida", "inject", 0.2).status_code == 200
        changed = http.post(
            "/admin/users/ida/policy/rewards", json={"arm": "inject", "reward": 0.9, "previous": 0.2}
        )
        assert changed.status_code == 200
        shown = changed.json()["arms"]["inject"]
        assert (shown["pulls"], shown["mean_reward"]) == (1, pytest.approx(0.9))
        assert (shown["alpha"], shown["beta"]) == (pytest.approx(1.9), pytest.approx(1.1))  # no decay either


def test_a_new_user_starts_from_the_tenants_posterior_scaled_down(
    redis_url: str, fake_upstream: FakeUpstream
) -> None:
    config = policy(["off", "inject"], discount=1.0, tenant_discount=1.0, prior_strength=4)
    with running(redis_url, fake_upstream, [], policy=config) as proxy, admin_client(proxy) as http:
        for i in range(20):
            assert reward(http, f"old-{i}", "inject", 1.0).status_code == 200
            assert reward(http, f"old-{i}", "off", 0.0).status_code == 200
        arms = http.get("/admin/users/newcomer/policy").json()["arms"]
        assert arms["inject"]["prior"] == {"alpha": 5.0, "beta": 1.0}  # 20 rewards weigh as 4
        assert arms["off"]["prior"] == {"alpha": 1.0, "beta": 5.0}
        assert arms["inject"]["pulls"] == 0
        picks = [ask(client(proxy), "newcomer") for _ in range(20)]
        assert picks.count("inject") >= 15  # P(Beta(1,5) > Beta(5,1)) is under 1 %


def test_the_policy_converges_on_a_planted_user_and_follows_a_change_of_mind(
    redis_url: str, fake_upstream: FakeUpstream
) -> None:
    rng = random.Random(7)
    config = policy(["off", "inject", "inject-no-exemplars"], discount=0.95)
    with running(redis_url, fake_upstream, [], policy=config) as proxy, admin_client(proxy) as http:
        sdk = client(proxy)

        def play(rounds: int, liked: str) -> list[str]:
            picks = []
            for _ in range(rounds):
                arm = ask(sdk, "carl")
                assert arm is not None
                picks.append(arm)
                value = 0.9 if arm == liked else 0.1
                assert reward(http, "carl", arm, 1.0 if rng.random() < value else 0.0).status_code == 200
            return picks

        first = play(60, "inject")
        assert first[-20:].count("inject") >= 14, first
        arms = http.get("/admin/users/carl/policy").json()["arms"]
        assert max(arms, key=lambda a: arms[a]["posterior_mean"]) == "inject"
        then = play(50, "off")  # the user's taste changed
        assert then[-15:].count("off") >= 10, then


def test_forget_removes_the_policy_state(redis_url: str, fake_upstream: FakeUpstream) -> None:
    r = redis.Redis.from_url(redis_url)
    with running(redis_url, fake_upstream, ["off", "inject"]) as proxy, admin_client(proxy) as http:
        assert reward(http, "dora", "inject", 1.0).status_code == 200
        assert r.exists(keys.policy_user("tenant-a", "dora"))
        exported = http.get("/admin/users/dora/export").json()
        assert any(item["key"] == keys.policy_user("tenant-a", "dora") for item in exported["other_keys"])
        assert http.delete("/admin/users/dora").status_code == 200
        assert not r.exists(keys.policy_user("tenant-a", "dora"))
        assert http.get("/admin/users/dora/policy").json()["arms"]["inject"]["pulls"] == 0


def test_tenants_are_isolated(redis_url: str, fake_upstream: FakeUpstream) -> None:
    with (
        running(redis_url, fake_upstream, ["off", "inject"]) as proxy,
        admin_client(proxy, "tenant-a") as a,
        admin_client(proxy, "tenant-b") as b,
    ):
        assert reward(a, "eve", "inject", 1.0).status_code == 200
        assert a.get("/admin/users/eve/policy").json()["arms"]["inject"]["pulls"] == 1
        assert b.get("/admin/users/eve/policy").json()["arms"]["inject"]["pulls"] == 0
        assert b.get("/admin/policy").json()["arms"]["inject"]["pulls"] == 0
        assert a.get("/admin/policy").json()["arms"]["inject"]["pulls"] == 1


def test_admin_routes_check_the_key_and_the_reward(redis_url: str, fake_upstream: FakeUpstream) -> None:
    with running(redis_url, fake_upstream, ["off", "inject"]) as proxy, admin_client(proxy) as http:
        assert (
            httpx.get(f"{proxy.url}/admin/policy", headers={"X-Persona-Tenant": "tenant-a"}).status_code
            == 401
        )
        app = {"Authorization": f"Bearer {APP_KEY_A}", "X-Persona-Tenant": "tenant-a"}
        assert httpx.get(f"{proxy.url}/admin/users/x/policy", headers=app).status_code in (401, 403)
        assert reward(http, "fay", "inject", 1.5).status_code in (400, 422)
        assert reward(http, "fay", "shout", 0.5).status_code in (400, 422)
        shown = http.get("/admin/policy").json()
        assert shown["mode"] == "inject" and shown["arms_configured"] == ["off", "inject"]


# --- several proxy processes ----------------------------------------------------------------------
@pytest.mark.slow
def test_concurrent_rewards_through_two_proxy_processes_are_all_counted(
    redis_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = policy(["off", "inject"], discount=1.0, tenant_discount=1.0)
    values = [round(random.Random(3).random() * (i % 7) / 6, 3) for i in range(300)]
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Persona-Tenant": "tenant-a"}

    async def send(url: str, part: list[float]) -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
            limit = asyncio.Semaphore(16)

            async def one(value: float) -> None:
                async with limit:
                    sent = await http.post(
                        "/admin/users/gil/policy/rewards", json={"arm": "inject", "reward": value}
                    )
                    assert sent.status_code == 200, sent.text

            await asyncio.gather(*(one(v) for v in part))

    env = process_env(redis_url, fake_upstream, policy=orjson.dumps(config).decode())
    with serving(env, tmp_path / "one.log") as one, serving(env, tmp_path / "two.log") as two:

        async def both() -> None:
            await asyncio.gather(send(one.url, values[::2]), send(two.url, values[1::2]))

        asyncio.run(both())
        shown = httpx.get(f"{one.url}/admin/users/gil/policy", headers=headers).json()["arms"]["inject"]
        tenant = httpx.get(f"{two.url}/admin/policy", headers=headers).json()["arms"]["inject"]
    for view in (shown, tenant):
        assert view["pulls"] == len(values)
        assert view["alpha"] - view["prior"]["alpha"] == pytest.approx(sum(values), abs=1e-6)
        assert view["beta"] - view["prior"]["beta"] == pytest.approx(len(values) - sum(values), abs=1e-6)


def test_a_paused_redis_costs_the_call_nothing_but_the_choice(
    fresh_redis: Any, fake_upstream: FakeUpstream
) -> None:
    """The posteriors are read with the persona, within its timeout: when Redis does not answer the call
    goes on with the fallback arm, no persona, and a 503 only where a reward must be written."""
    config = {"default": {"arms": ["off", "inject"], "mode": "auto"}}
    with (
        running(fresh_redis.url, fake_upstream, [], policy=config, redis_socket_timeout_s=0.5) as proxy,
        fresh_redis.while_paused(),
    ):
        started = time.monotonic()
        assert ask(client(proxy, mode=None), "jim") == "inject"
        assert time.monotonic() - started < 10  # not a wait on Redis (its socket timeout is 0.5 s)
        with admin_client(proxy) as http:
            assert reward(http, "jim", "inject", 1.0).status_code == 503


def test_feedback_on_an_answer_rewards_the_arm_that_gave_it(
    redis_url: str, fake_upstream: FakeUpstream
) -> None:
    config = policy(["inject-no-exemplars"], discount=0.5, tenant_discount=1.0, prior_strength=0)
    with running(redis_url, fake_upstream, [], policy=config) as proxy, admin_client(proxy) as http:
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="fake-model",
            messages=QUESTION,  # type: ignore[arg-type]
            user="kim",
        )
        assert raw.headers["x-persona-arm"] == "inject-no-exemplars"
        rid = raw.headers["x-persona-response-id"]
        app = {"Authorization": f"Bearer {APP_KEY_A}", "X-Persona-User": "kim"}

        def signal(name: str) -> None:
            sent = httpx.post(f"{proxy.v1}/feedback", json={"response_id": rid, "signal": name}, headers=app)
            assert sent.status_code == 201, sent.text

        signal("thumbs_down")  # reward 0
        arm = http.get("/admin/users/kim/policy").json()["arms"]["inject-no-exemplars"]
        assert (arm["pulls"], arm["alpha"], arm["beta"]) == (1, pytest.approx(1.0), pytest.approx(2.0))
        signal("copy")  # the same answer's reward becomes 0.2: it replaces the 0, no second pull
        arm = http.get("/admin/users/kim/policy").json()["arms"]["inject-no-exemplars"]
        assert (arm["pulls"], arm["mean_reward"]) == (1, pytest.approx(0.2))
        assert (arm["alpha"], arm["beta"]) == (pytest.approx(1.2), pytest.approx(1.8))
