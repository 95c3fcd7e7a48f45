"""Per-context personas: grouping, induction as a job, the router on the chat path (openai SDK, fake
upstream), the admin views, rollback, export, forget and tenant isolation."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import redis

from middleware.evaluation.router_eval import router_accuracy
from middleware.induction.contexts import induce_contexts
from middleware.models import Message, PreferencePair
from middleware.personalize.contexts import Router, build_router, group_pairs, prompt_text
from middleware.store import keys
from tests.contexts_data import CODE_CALL, COOKING, COOKING_CALL, UNRELATED_CALL, planted_pairs
from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import drain, job_settings, store_services
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.metrics import sample
from tests.support.proxy import APP_KEY_A, APP_KEY_B, RunningProxy
from tests.support.proxy import admin_client as admin

T, U = "tenant-a", "carol"


def test_pairs_group_by_tag_else_by_prompt_clusters() -> None:
    tagged = group_pairs(planted_pairs(U, tagged=True), min_pairs=5, max_contexts=10, min_margin=0.1)
    assert {(g.name, g.grouping, len(g.pairs)) for g in tagged} == {("cooking", "tag", 7), ("code", "tag", 7)}
    assert all(p.context_tag == g.name for g in tagged for p in g.pairs)

    found = group_pairs(planted_pairs(U, tagged=False), min_pairs=5, max_contexts=10, min_margin=0.1)
    assert len(found) == 2 and all(g.grouping == "cluster" for g in found)
    # each cluster is one topic, whole
    topics = sorted(sorted({"Python" in prompt_text(p) for p in g.pairs}) for g in found)
    assert topics == [[False], [True]] and sorted(len(g.pairs) for g in found) == [7, 7]

    # prompts that share nothing form no context; too few pairs per context form none either
    assert group_pairs(make_pairs(U, 20), min_pairs=5, max_contexts=10, min_margin=0.1) == []
    few = group_pairs(planted_pairs(U, tagged=True), min_pairs=8, max_contexts=10, min_margin=0.1)
    assert few == []


def test_router_picks_the_most_similar_context_above_the_threshold() -> None:
    groups = group_pairs(planted_pairs(U, tagged=True), min_pairs=5, max_contexts=10, min_margin=0.1)
    router = Router(build_router({g.name: (g.grouping, [prompt_text(p) for p in g.pairs]) for g in groups}))
    assert router.route(COOKING_CALL, 0.2).context == "cooking"
    assert router.route(CODE_CALL, 0.2).context == "code"
    unrelated = router.route(UNRELATED_CALL, 0.2)
    assert (unrelated.decision, unrelated.context) == ("general", None)
    assert router.route(COOKING_CALL, 0.99).context is None  # the threshold holds
    assert router.route(CODE_CALL, 0.2, available=["cooking"]).context != "code"


def persona_of(request: Any) -> str:
    blocks = [
        m["content"]
        for m in request.messages
        if m["role"] == "system" and "<user_preferences>" in m["content"]
    ]
    assert len(blocks) == 1, request.messages
    return str(blocks[0])


def seen_persona(requests: list[str], data: str) -> str:
    return "Persona from: " + " | ".join(requests)


async def induce_planted(
    proxy: RunningProxy, fake_upstream: FakeUpstream, user: str = U, tenant: str = T
) -> dict[str, Any]:
    async with store_services(proxy.settings) as services:
        await services.preferences.add_pairs(tenant, user, planted_pairs(user, tagged=True))
    fake_upstream.responder = InductionResponder(persona=seen_persona)
    with admin(proxy, tenant) as http:
        job_id = http.post(f"/admin/users/{user}/persona/refresh").json()["job_id"]
        await drain(proxy.settings)
        job: dict[str, Any] = http.get(f"/admin/jobs/{job_id}").json()
    assert job["state"] == "complete", job
    return job


async def test_refresh_job_induces_context_personas_and_the_router_routes_chat(
    jproxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    job = await induce_planted(jproxy, fake_upstream)
    result = job["result"]
    assert result["version"] == 1  # the general persona
    assert {n: c["status"] for n, c in result["contexts"].items()} == {
        "cooking": "complete",
        "code": "complete",
    }
    assert sorted(result["router"]["contexts"]) == ["code", "cooking"]

    with admin(jproxy) as http:
        persona = http.get(f"/admin/users/{U}/persona").json()
        contexts = {c["context"]: c for c in persona["contexts"]}
        assert set(contexts) == {"cooking", "code"} and all(c["routed"] for c in contexts.values())
        assert "chicken" in contexts["cooking"]["text"] and "Python" not in contexts["cooking"]["text"]
        assert "Python" in contexts["code"]["text"] and "recipe" not in contexts["code"]["text"]
        assert contexts["code"]["provenance"]["grouping"] == "tag"
        assert len(contexts["code"]["provenance"]["source_preference_ids"]) == 7
        versions = http.get(f"/admin/users/{U}/persona/versions").json()
        assert sorted((v["context"] or "", v["version"], v["current"]) for v in versions) == [
            ("", 1, True),
            ("code", 1, True),
            ("cooking", 1, True),
        ]

    chat = openai.OpenAI(base_url=jproxy.v1, api_key=APP_KEY_A, max_retries=0)
    fake_upstream.responder = None

    def ask(text: str, **kwargs: Any) -> tuple[str, str]:
        raw = chat.chat.completions.with_raw_response.create(
            model="fake-model", messages=[{"role": "user", "content": text}], user=U, **kwargs
        )
        raw.parse()
        return raw.headers["x-persona-context"], persona_of(fake_upstream.chat_requests[-1])

    # untagged: routed by similarity to the last user turn
    context, sent = ask(COOKING_CALL)
    assert context == "cooking" and "chicken" in sent and "Python" not in sent
    context, sent = ask(CODE_CALL)
    assert context == "code" and "Python" in sent and "recipe" not in sent
    # nothing similar: the general persona (it saw both topics)
    context, sent = ask(UNRELATED_CALL)
    assert context == "general" and "Python" in sent and "recipe" in sent
    # tagged: the tag wins over the text, by header or by metadata.context
    context, sent = ask(COOKING_CALL, extra_headers={"X-Persona-Context": "code"})
    assert context == "code" and "Python" in sent and "recipe" not in sent
    context, sent = ask(CODE_CALL, metadata={"context": "cooking"})
    assert context == "cooking" and "chicken" in sent
    # a tag the user has no persona for: the general one
    context, sent = ask(CODE_CALL, extra_headers={"X-Persona-Context": "travel"})
    assert context == "general" and "recipe" in sent and "Python" in sent
    bad = httpx.post(
        f"{jproxy.v1}/chat/completions",
        json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "user": U},
        headers={"Authorization": f"Bearer {APP_KEY_A}", "X-Persona-Context": "no spaces allowed"},
    )
    assert bad.status_code == 400

    assert sample(jproxy.url, "persona_context_routed_total", decision="similar") == 2
    assert sample(jproxy.url, "persona_context_routed_total", decision="tag") == 2
    assert sample(jproxy.url, "persona_context_routed_total", decision="general") == 2


async def test_a_retried_job_keeps_the_context_personas_its_first_try_stored(
    redis_url: str, fake_upstream: FakeUpstream
) -> None:
    """The same job id again (a worker that died, a job retried after a failure): the contexts an
    earlier try stored are kept as they are, without an LLM call, and only the others are induced."""
    responder = InductionResponder(persona=seen_persona)

    def code_fails(body: dict[str, Any]) -> Reply | dict[str, Any] | None:
        if "Python" in str(body["messages"]):  # the code context's calls get malformed answers
            return Reply(content="not json")
        return responder(body)

    async with store_services(job_settings(redis_url, fake_upstream)) as services:
        pairs = planted_pairs(U, tagged=True)
        await services.preferences.add_pairs(T, U, pairs)
        fake_upstream.responder = code_fails
        first = await induce_contexts(services.induction, T, U, pairs=pairs, job_id="job-1")
        assert first["contexts"]["cooking"]["status"] == "complete"
        assert first["contexts"]["code"]["status"] == "failed"

        fake_upstream.responder = responder
        sent_before = len(fake_upstream.chat_requests)
        again = await induce_contexts(services.induction, T, U, job_id="job-1")
        sent = [str(r.body) for r in fake_upstream.chat_requests[sent_before:]]
        assert again["contexts"]["cooking"] == {**first["contexts"]["cooking"], "reused": True}
        assert again["contexts"]["code"]["status"] == "complete" and not again["contexts"]["code"]["reused"]
        assert sent and not [body for body in sent if any(prompt in body for prompt in COOKING)]
        assert sorted(again["router"]["contexts"]) == ["code", "cooking"]
        for name in ("cooking", "code"):
            versions = await services.contexts.versions(T, U, name)
            assert [(v.version, v.provenance["job_id"]) for v in versions] == [(1, "job-1")]

        other = await induce_contexts(services.induction, T, U, job_id="job-2")  # a new job: all anew
        assert {n: (c["version"], c["reused"]) for n, c in other["contexts"].items()} == {
            "cooking": (2, False),
            "code": (2, False),
        }


async def test_context_rollback_export_forget_and_tenant_isolation(
    jproxy: RunningProxy, fake_upstream: FakeUpstream, redis_url: str
) -> None:
    await induce_planted(jproxy, fake_upstream)
    chat_b = openai.OpenAI(base_url=jproxy.v1, api_key=APP_KEY_B, max_retries=0)
    fake_upstream.responder = None
    with admin(jproxy) as http, admin(jproxy, "tenant-b") as other:
        # tenant-b's user of the same id has nothing: no persona, no contexts, tag or not
        assert other.get(f"/admin/users/{U}/persona").status_code == 404
        assert other.get(f"/admin/users/{U}/persona/versions").json() == []
        raw = chat_b.chat.completions.with_raw_response.create(
            model="fake-model",
            messages=[{"role": "user", "content": CODE_CALL}],
            user=U,
            extra_headers={"X-Persona-Context": "code"},
        )
        raw.parse()
        assert raw.headers["x-persona-context"] == "general" and raw.headers["x-persona-version"] == "none"
        assert not any(
            "<user_preferences>" in str(m["content"]) for m in fake_upstream.chat_requests[-1].messages
        )
        assert (
            other.post(
                f"/admin/users/{U}/persona/rollback", json={"version": 1, "context": "code"}
            ).status_code
            == 404
        )

        # an operator's new version of one context, then a rollback of that line only
        put = http.put(
            f"/admin/users/{U}/persona", json={"text": "Code v2: terse answers", "context": "code"}
        )
        assert put.status_code == 200 and put.json()["version"] == 2 and put.json()["routed"] is True
        chat = openai.OpenAI(base_url=jproxy.v1, api_key=APP_KEY_A, max_retries=0)
        chat.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": CODE_CALL}], user=U
        )
        assert "Code v2" in persona_of(fake_upstream.chat_requests[-1])
        back = http.post(f"/admin/users/{U}/persona/rollback", json={"version": 1, "context": "code"})
        assert back.status_code == 200 and back.json()["version"] == 1
        chat.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": CODE_CALL}], user=U
        )
        assert "Code v2" not in persona_of(fake_upstream.chat_requests[-1])
        general = http.get(f"/admin/users/{U}/persona").json()
        assert general["version"] == 1  # the general line did not move
        assert (
            http.post(
                f"/admin/users/{U}/persona/rollback", json={"version": 9, "context": "code"}
            ).status_code
            == 404
        )
        # switching one context off: the general persona answers for it
        assert http.delete(f"/admin/users/{U}/persona", params={"context": "code"}).status_code == 200
        raw = chat.chat.completions.with_raw_response.create(
            model="fake-model", messages=[{"role": "user", "content": CODE_CALL}], user=U
        )
        raw.parse()
        assert raw.headers["x-persona-context"] == "general"

        exported = http.get(f"/admin/users/{U}/export").json()
        lines = exported["contexts"]["lines"]
        assert set(lines) == {"code", "cooking"}
        assert [v["version"] for v in lines["code"]["versions"]] == [1, 2] and lines["code"][
            "current"
        ] is None
        assert lines["cooking"]["current"]["provenance"]["context"] == "cooking"
        assert {c["name"] for c in exported["contexts"]["router"]["contexts"]} == {"code", "cooking"}
        assert not [k for k in exported["other_keys"] if ":ctx:" in k["key"] or ":contexts" in k["key"]]

        assert http.delete(f"/admin/users/{U}").status_code == 200
        assert http.get(f"/admin/users/{U}/persona/versions").json() == []
    r = redis.Redis.from_url(redis_url)
    try:
        assert list(r.scan_iter(match=keys.user_pattern(T, U))) == []
    finally:
        r.close()


def test_preferences_carry_their_context_tag(proxy: RunningProxy) -> None:
    pair = {
        "user": "dave",
        "context": [{"role": "user", "content": "Q"}],
        "chosen": {"role": "assistant", "content": "a"},
        "rejected": {"role": "assistant", "content": "b"},
    }
    with httpx.Client(base_url=proxy.v1, headers={"Authorization": f"Bearer {APP_KEY_A}"}) as http:
        assert http.post("/preferences", json={**pair, "metadata": {"context": "code"}}).status_code == 201
        by_header = {**pair, "chosen": {"role": "assistant", "content": "c"}}
        assert (
            http.post("/preferences", json=by_header, headers={"X-Persona-Context": "cooking"}).status_code
            == 201
        )
        bad = {**pair, "chosen": {"role": "assistant", "content": "d"}, "metadata": {"context": "a b"}}
        assert http.post("/preferences", json=bad).status_code in (400, 422)
    with admin(proxy) as a:
        stored = [p["data"] for p in a.get("/admin/users/dave/export").json()["preferences"]]
    assert sorted(p.get("context_tag") for p in stored) == ["code", "cooking"]


def test_router_accuracy_on_labelled_prompts() -> None:
    """`persona eval`'s router figure: held-out pairs routed back to the subreddit they came from,
    with the label line removed; a user whose labels do not follow the text is routed at chance."""
    users: dict[str, list[PreferencePair]] = {}
    for u in ("u1", "u2"):
        pairs = planted_pairs(u, tagged=False) * 2
        users[u] = [
            p.model_copy(
                update={
                    "context": [
                        Message(
                            role="user",
                            content=f"SUBREDDIT: r/{'python' if 'Python' in prompt_text(p) else 'cooking'}\n"
                            + prompt_text(p),
                        )
                    ]
                }
            )
            for p in pairs
        ]
    result = router_accuracy(users, min_pairs=5, threshold=0.0)
    assert result["label_removed"]["users"] == 2 and result["label_removed"]["mean_accuracy"] == 1.0
    assert result["label_in_prompt"]["mean_accuracy"] == 1.0

    shuffled = {
        u: [p.model_copy(update={"context_tag": "a" if i % 3 else "b"}) for i, p in enumerate(pairs)]
        for u, pairs in users.items()
    }
    control = router_accuracy(shuffled, min_pairs=5, threshold=0.0)["label_removed"]
    assert control["mean_accuracy"] < 0.8


def test_a_tagged_comparison_routes_its_persona_and_tags_its_pairs(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    with admin(proxy) as http:
        assert http.put("/admin/users/erin/persona", json={"text": "General taste"}).status_code == 200
        assert (
            http.put("/admin/users/erin/persona", json={"text": "Code taste", "context": "code"}).status_code
            == 200
        )
    fake_upstream.responder = lambda body: Reply(content=f"answer at temperature {body.get('temperature')}")
    with httpx.Client(base_url=proxy.v1, headers={"Authorization": f"Bearer {APP_KEY_A}"}, timeout=30) as c:
        created = c.post(
            "/comparisons",
            json={
                "user": "erin",
                "model": "fake-model",
                "messages": [{"role": "user", "content": CODE_CALL}],
                "metadata": {"context": "code"},
            },
        )
        assert created.status_code == 200, created.text
        assert all("Code taste" in persona_of(r) for r in fake_upstream.chat_requests[-4:])
        judged = c.post(f"/comparisons/{created.json()['id']}/judgement", json={"best": 0, "worst": 1})
        assert judged.status_code == 201, judged.text
    with admin(proxy) as a:
        stored = [
            p["data"] for p in a.get("/admin/users/erin/export").json()["preferences"] if p["kind"] == "pair"
        ]
    assert stored and {p["context_tag"] for p in stored} == {"code"}


def test_the_responses_route_routes_by_tag(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    with admin(proxy) as http:
        assert http.put("/admin/users/fay/persona", json={"text": "General taste"}).status_code == 200
        assert (
            http.put("/admin/users/fay/persona", json={"text": "Code taste", "context": "code"}).status_code
            == 200
        )
    oa = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
    raw = oa.responses.with_raw_response.create(
        model="fake-model", input=CODE_CALL, user="fay", extra_headers={"X-Persona-Context": "code"}
    )
    raw.parse()
    sent = [r for r in fake_upstream.requests if r.path.endswith("/responses")][-1].body
    assert raw.headers["x-persona-context"] == "code" and "Code taste" in sent["instructions"]
    assert raw.headers["x-persona-source"] == "user-context"
    raw = oa.responses.with_raw_response.create(model="fake-model", input=CODE_CALL, user="fay")
    raw.parse()
    sent = [r for r in fake_upstream.requests if r.path.endswith("/responses")][-1].body
    # an operator's context persona has no centroid until a refresh: untagged calls get the general one
    assert raw.headers["x-persona-context"] == "general" and "General taste" in sent["instructions"]
    assert raw.headers["x-persona-source"] == "user"


def test_resolution_order_context_before_segment(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    """A user with a context persona and a segment but no general persona: the tag reaches the
    context persona (user-context); an untagged call falls through to the segment's."""
    with admin(proxy) as http:
        put = http.put("/admin/segments/devs", json={"description": "developers", "persona": "Segment taste"})
        assert put.status_code in (200, 201), put.text
        assert http.put("/admin/users/gus/segment", json={"segment": "devs"}).status_code in (200, 201)
        assert (
            http.put("/admin/users/gus/persona", json={"text": "Code taste", "context": "code"}).status_code
            == 200
        )
    chat = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
    raw = chat.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=[{"role": "user", "content": CODE_CALL}],
        user="gus",
        extra_headers={"X-Persona-Context": "code"},
    )
    raw.parse()
    assert (raw.headers["x-persona-source"], raw.headers["x-persona-context"]) == ("user-context", "code")
    assert "Code taste" in persona_of(fake_upstream.chat_requests[-1])
    raw = chat.chat.completions.with_raw_response.create(
        model="fake-model", messages=[{"role": "user", "content": CODE_CALL}], user="gus"
    )
    raw.parse()
    assert (raw.headers["x-persona-source"], raw.headers["x-persona-context"]) == ("segment", "general")
    assert "Segment taste" in persona_of(fake_upstream.chat_requests[-1])
