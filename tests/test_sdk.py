"""The SDK: PersonalizedOpenAI / AsyncPersonalizedOpenAI against the running proxy."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from middleware.sdk import AsyncPersonalizedOpenAI, Comparison, PersonalizedOpenAI
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import ADMIN_KEY, APP_KEY_A, RunningProxy

PROMPT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture(autouse=True)
def distinct_answers(fake_upstream: FakeUpstream) -> None:
    """Each variant answers differently (identical answers yield no pair)."""
    fake_upstream.responder = lambda body: Reply(
        content=f"answer {'/'.join(m['role'] for m in body['messages'])} {body.get('temperature')}"
    )


def sdk(proxy: RunningProxy, **kwargs: Any) -> PersonalizedOpenAI:
    return PersonalizedOpenAI(
        base_url=proxy.v1, api_key=APP_KEY_A, user="alice", admin_key=ADMIN_KEY, tenant="tenant-a", **kwargs
    )


def test_is_an_openai_client_and_personalizes_chat(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    with sdk(proxy) as client:
        # The proxy's errors come back as the openai package's own exceptions.
        with pytest.raises(openai.NotFoundError):
            client.personas.get()
        persona = client.personas.put("Loves the colour teal.")
        assert persona.version == 1 and persona.user == "alice"
        answer = client.chat.completions.create(model="fake-model", messages=PROMPT)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "answer system/system/user None"  # persona block added
    [request] = fake_upstream.chat_requests
    assert request.headers["authorization"] == "Bearer sk-upstream-secret"
    assert "Loves the colour teal." in str(request.body["messages"])


def test_comparisons_create_and_judge(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    with sdk(proxy) as client:
        comparison = client.comparisons.create(model="fake-model", messages=PROMPT, session_id="s-sdk")
        assert isinstance(comparison, Comparison)
        assert len(comparison.candidates) == 4 and all(c.ok for c in comparison.candidates)
        assert comparison.session_id == "s-sdk"
        judgement = client.comparisons.judge(comparison.id, best=0, worst=1, rationale="clearer")
        assert judgement.pairs_added == 5 and judgement.session_appended
        with pytest.raises(openai.ConflictError):
            client.comparisons.judge(comparison.id, best=0, worst=1)
        with pytest.raises(openai.NotFoundError):
            client.comparisons.judge("cmp_nope", best=0, worst=1)
        with pytest.raises(openai.UnprocessableEntityError):
            client.comparisons.judge(comparison.id, best=1, worst=1)
    with PersonalizedOpenAI(base_url=proxy.v1, api_key=APP_KEY_A) as anonymous, pytest.raises(ValueError):
        anonymous.comparisons.create(model="fake-model", messages=PROMPT)


def test_preferences_add_single_and_batch(proxy: RunningProxy) -> None:
    with sdk(proxy) as client:
        one = client.preferences.add(
            context="Which is better?",
            chosen="A, because",
            rejected="B",
            rationale="reasons",
            idempotency_key="k1",
        )
        assert (one.created, one.duplicates) == (1, 0)
        assert (
            client.preferences.add(context="x", chosen="changed", rejected="B", idempotency_key="k1").created
            == 0
        )
        batch = client.preferences.add(
            items=[
                {"context": "q1", "chosen": "a1", "rejected": "b1"},
                {
                    "context": [{"role": "user", "content": "q2"}],
                    "chosen": "a2",
                    "rejected": "b2",
                    "user": "bob",
                },
            ]
        )
        assert batch.created == 2 and [d["user"] for d in batch.data] == ["alice", "bob"]


def test_persona_admin_helpers(proxy: RunningProxy) -> None:
    with sdk(proxy) as client:
        client.personas.put("first", user="dana")
        client.personas.put(
            "second",
            user="dana",
            exemplars=[
                {
                    "context": [{"role": "user", "content": "q"}],
                    "chosen": {"role": "assistant", "content": "a"},
                    "rejected": {"role": "assistant", "content": "b"},
                }
            ],
        )
        assert client.personas.get("dana").text == "second"
        versions = client.personas.versions("dana")
        assert [v.version for v in versions] == [1, 2] and versions[1].current
        assert client.personas.rollback(1, user="dana").text == "first"
        assert client.personas.get("dana").text == "first"
        assert client.personas.delete("dana")["deleted"] is True
        with pytest.raises(openai.NotFoundError):
            client.personas.get("dana")
    no_admin = PersonalizedOpenAI(base_url=proxy.v1, api_key=APP_KEY_A, user="dana")
    with no_admin, pytest.raises(openai.PermissionDeniedError):
        no_admin.personas.get()


def test_refresh_posts_to_the_refresh_route() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"job_id": "job-1"})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with PersonalizedOpenAI(
        base_url="http://proxy.test/v1",
        api_key="k",
        user="eve",
        admin_key="adm",
        tenant="t1",
        http_client=http,
    ) as client:
        assert client.personas.refresh().job_id == "job-1"
    [request] = seen
    assert str(request.url) == "http://proxy.test/admin/users/eve/persona/refresh"
    assert request.headers["authorization"] == "Bearer adm"
    assert request.headers["x-persona-tenant"] == "t1" and request.headers["x-persona-user"] == "eve"


async def test_async_client(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    async with AsyncPersonalizedOpenAI(
        base_url=proxy.v1, api_key=APP_KEY_A, user="erin", admin_key=ADMIN_KEY, tenant="tenant-a"
    ) as client:
        with pytest.raises(openai.NotFoundError):
            await client.personas.get()
        await client.personas.put("Likes lists.")
        comparison = await client.comparisons.create(model="fake-model", messages=PROMPT)
        assert comparison.user == "erin" and comparison.persona_version == 1
        judged = await client.comparisons.judge(comparison.id, best=3, worst=2, rationale="lists")
        assert judged.pairs_added == 5
        added = await client.preferences.add(context="q", chosen="a", rejected="b")
        assert added.created == 1
        assert [v.version for v in await client.personas.versions()] == [1]
        assert (await client.personas.get()).text == "Likes lists."
        answer = await client.chat.completions.create(model="fake-model", messages=PROMPT)  # type: ignore[arg-type]
        assert answer.choices[0].message.content
    assert "Likes lists." in str(fake_upstream.chat_requests[-1].body["messages"])


def test_creations_carry_an_idempotency_key(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    """Every creation sends one (the client's own retries reuse it); a caller's key names one creation."""
    with sdk(proxy) as client:
        first = client.comparisons.create(model="fake-model", messages=PROMPT, idempotency_key="order-17")
        calls = len(fake_upstream.chat_requests)
        again = client.comparisons.create(model="fake-model", messages=PROMPT, idempotency_key="order-17")
        assert again.id == first.id and len(fake_upstream.chat_requests) == calls
        assert client.comparisons.create(model="fake-model", messages=PROMPT).id != first.id
        for user in ("alice", "bob"):
            client.personas.put(f"{user} likes teal.", user=user)
        run = client.evaluations.create(users=["alice", "bob"], model="fake-model")
        trial = client.evaluations.trial(run["id"], prompt="Name a colour.", idempotency_key="t-1")
        retried = client.evaluations.trial(run["id"], prompt="Name a colour.", idempotency_key="t-1")
        assert retried.id == trial.id
        assert client.evaluations.trial(run["id"], prompt="Name a colour.").id != trial.id
