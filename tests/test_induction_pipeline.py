"""The SynthesizeMe pipeline end to end against the fake upstream (scripted per pair)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from middleware.errors import BudgetExceeded, LLMOutputError, NotEnoughData, UpstreamError
from middleware.induction.context import run_all
from middleware.induction.pipeline import Induction, split, time_order
from middleware.services import Services
from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import store_services
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.proxy import proxy_settings

T, U = "tenant-a", "alice"


@pytest.fixture
async def services(redis_url: str, fake_upstream: FakeUpstream) -> AsyncIterator[Services]:
    settings = proxy_settings(redis_url, fake_upstream, induction_model="fake-judge", induction_concurrency=4)
    async with store_services(settings) as svc:
        yield svc


def with_settings(services: Services, **changes: Any) -> Induction:
    """The pipeline under other settings (a new value: the app's own settings stay as they were)."""
    return dataclasses.replace(services.induction, settings=services.settings.model_copy(update=changes))


async def test_split_is_time_ordered_70_30() -> None:
    pairs = list(reversed(make_pairs(U, 10)))
    ordered = time_order(pairs)
    train, validation = split(ordered, 0.3)
    assert [p.chosen.content for p in train] == [f"chosen answer to Q{i}" for i in range(7)]
    assert [p.chosen.content for p in validation] == [f"chosen answer to Q{i}" for i in range(7, 10)]
    assert [len(x) for x in split(make_pairs(U, 5), 0.3)] == [4, 1]


async def test_pipeline_keeps_matching_traces_and_stores_version(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    await services.preferences.add_pairs(T, U, make_pairs(U, 10, rationale="I like it short"))
    # Bootstrap gets Q1 and Q4 wrong; the judge is right on everything only with >= 1 exemplar.
    responder = InductionResponder(
        wrong_bootstrap={"Q1", "Q4"},
        judge_right=lambda request, persona, n: n >= 1 or request == "Q7",
    )
    fake_upstream.responder = responder
    events: list[dict[str, Any]] = []

    result = await services.induction.induce(T, U, progress=events.append)

    assert result["status"] == "complete" and result["version"] == 1
    persona = await services.personas.get(T, U)
    assert persona is not None
    # Only kept traces (Q0..Q6 minus Q1, Q4) reached synthesis.
    assert persona.text == "Prefers short direct answers. Seen: Q0,Q2,Q3,Q5,Q6"
    prov = persona.provenance
    ids = {p.chosen.content: p.stable_id() for p in await services.preferences.pairs(T, U)}
    assert prov["kept_trace_ids"] == [ids[f"chosen answer to Q{i}"] for i in (0, 2, 3, 5, 6)]
    assert prov["validation_ids"] == [ids[f"chosen answer to Q{i}"] for i in (7, 8, 9)]
    assert sorted(prov["source_preference_ids"]) == sorted(ids.values())
    assert prov["model"] == "fake-judge" and prov["prompt_template_version"] == "induction/2"
    # The empty set scores 1/3 (only Q7), any non-empty set 3/3: a non-empty set wins.
    assert prov["candidate_scores"][0] == {"exemplar_ids": [], "correct": 1, "accuracy": 1 / 3}
    assert prov["validation_accuracy"] == 1.0
    assert 1 <= len(persona.exemplars) <= services.settings.exemplars_max
    assert {e.stable_id() for e in persona.exemplars} <= set(prov["kept_trace_ids"])
    assert set(prov["exemplar_ids"]) == {e.stable_id() for e in persona.exemplars}
    # Cost: 7 bootstrap + 1 synthesis + 2 orders x 3 validation pairs x (1 + 4 candidate sets).
    n_sets = len(prov["candidate_scores"])
    assert responder.calls == {"BootstrapAnswer": 7, "PersonaDraft": 1, "JudgeVerdict": 6 * n_sets}
    assert prov["cost"]["calls"] == 8 + 6 * n_sets == len(fake_upstream.chat_requests)
    assert prov["cost"]["total_tokens"] > 0
    # Every call used structured output and the induction model; the rationale is evidence.
    for req in fake_upstream.chat_requests:
        assert req.body["response_format"]["type"] == "json_schema"
        assert req.body["model"] == "fake-judge"
    bootstrap_bodies = [
        b for b in responder.bodies if b["response_format"]["json_schema"]["name"] == "BootstrapAnswer"
    ]
    assert all(
        "<person_note>\nI like it short\n</person_note>" in b["messages"][1]["content"]
        for b in bootstrap_bodies
    )
    assert all("I like it short" not in b["messages"][0]["content"] for b in bootstrap_bodies)
    assert {e["stage"] for e in events} >= {"split", "bootstrap", "synthesize", "select", "store"}
    assert await services.preferences.pairs_since_refresh(T, U) == 0


async def test_bootstrap_order_is_randomised_but_seeded(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    await services.preferences.add_pairs(T, U, make_pairs(U, 20))
    fake_upstream.responder = InductionResponder()
    await services.induction.induce(T, U)
    first = [
        r.body["messages"][1]["content"]
        for r in fake_upstream.chat_requests
        if r.body["response_format"]["json_schema"]["name"] == "BootstrapAnswer"
    ]
    a_is_chosen = ["<completion_a>\nchosen" in c for c in first]
    assert 0 < sum(a_is_chosen) < len(a_is_chosen)
    fake_upstream.reset()
    fake_upstream.responder = InductionResponder()
    await services.induction.induce(T, U)
    second = [
        r.body["messages"][1]["content"]
        for r in fake_upstream.chat_requests
        if r.body["response_format"]["json_schema"]["name"] == "BootstrapAnswer"
    ]
    assert sorted(first) == sorted(second)


async def test_empty_exemplar_set_wins_ties(services: Services, fake_upstream: FakeUpstream) -> None:
    await services.preferences.add_pairs(T, U, make_pairs(U, 6))
    fake_upstream.responder = InductionResponder()
    await services.induction.induce(T, U)
    persona = await services.personas.get(T, U)
    assert persona is not None and persona.exemplars == []
    assert persona.provenance["validation_accuracy"] == 1.0


async def test_too_few_pairs_is_not_enough_data(services: Services, fake_upstream: FakeUpstream) -> None:
    await services.preferences.add_pairs(T, U, make_pairs(U, 4))
    fake_upstream.responder = InductionResponder()
    with pytest.raises(NotEnoughData, match="not enough data"):
        await services.induction.induce(T, U)
    assert fake_upstream.chat_requests == []
    assert await services.personas.get(T, U) is None


async def test_no_consistent_trace_keeps_current(services: Services, fake_upstream: FakeUpstream) -> None:
    await services.preferences.add_pairs(T, U, make_pairs(U, 5))
    before = await services.personas.save(T, U, "old persona", [], {"source": "admin"})
    fake_upstream.responder = InductionResponder(wrong_bootstrap={f"Q{i}" for i in range(5)})
    with pytest.raises(NotEnoughData) as info:
        await services.induction.induce(T, U)
    assert info.value.code == "no_consistent_traces"
    after = await services.personas.get(T, U)
    assert after == before


async def test_call_budget_too_small_stops_before_any_call(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    await services.preferences.add_pairs(T, U, make_pairs(U, 10))
    induction = with_settings(services, induction_max_calls=10)  # needs 7 + 1 + 6 at least
    fake_upstream.responder = InductionResponder()
    with pytest.raises(BudgetExceeded, match="at least 14 LLM calls"):
        await induction.induce(T, U)
    assert fake_upstream.chat_requests == []


async def test_call_budget_limits_candidate_sets(services: Services, fake_upstream: FakeUpstream) -> None:
    await services.preferences.add_pairs(T, U, make_pairs(U, 10))
    induction = with_settings(services, induction_max_calls=20)  # 8 + 6 for the empty set + 6 for one more set
    fake_upstream.responder = InductionResponder()
    result = await induction.induce(T, U)
    persona = await services.personas.get(T, U)
    assert persona is not None and len(persona.provenance["candidate_scores"]) == 2
    assert result["cost"]["calls"] == 20 == len(fake_upstream.chat_requests)


async def test_token_budget_stops_cleanly_mid_run(services: Services, fake_upstream: FakeUpstream) -> None:
    await services.preferences.add_pairs(T, U, make_pairs(U, 10))
    before = await services.personas.save(T, U, "old persona", [], {"source": "admin"})
    induction = with_settings(services, induction_max_tokens=3000, induction_max_completion_tokens=300)
    fake_upstream.responder = InductionResponder()
    with pytest.raises(BudgetExceeded, match="token budget"):
        await induction.induce(T, U)
    assert 0 < len(fake_upstream.chat_requests) < 14
    assert await services.personas.get(T, U) == before
    assert [p.version for p in await services.personas.list_versions(T, U)] == [1]


async def test_malformed_output_is_retried_then_clear_error(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    await services.preferences.add_pairs(T, U, make_pairs(U, 5))
    before = await services.personas.save(T, U, "old persona", [], {"source": "admin"})
    induction = with_settings(services, induction_concurrency=1)
    responder = InductionResponder()
    # The first answer is not JSON, the second lacks a field: the third (valid) one is used.
    fake_upstream.script(Reply(content="not json"), Reply(json={"reasoning": "x"}))
    fake_upstream.responder = responder
    result = await induction.induce(T, U)
    assert result["status"] == "complete" and result["cost"]["calls"] == len(fake_upstream.chat_requests)
    notes = [r.messages[-1]["content"] for r in fake_upstream.chat_requests]
    assert sum("not valid JSON" in n for n in notes) == 2
    # Always malformed: bounded attempts, a clear error, the persona untouched.
    fake_upstream.reset()
    fake_upstream.responder = lambda body: Reply(content="{oops")
    with pytest.raises(LLMOutputError, match="no valid BootstrapAnswer answer in 3 attempts"):
        await induction.induce(T, U)
    per_pair = Counter(r.messages[1]["content"] for r in fake_upstream.chat_requests)
    assert max(per_pair.values()) == 3
    current = await services.personas.get(T, U)
    assert current is not None and current.version == 2 and current.version != before.version


async def test_upstream_failure_keeps_current(services: Services, fake_upstream: FakeUpstream) -> None:
    await services.preferences.add_pairs(T, U, make_pairs(U, 5))
    before = await services.personas.save(T, U, "old persona", [], {"source": "admin"})
    responder = InductionResponder()

    def failing(body: dict[str, Any]) -> Any:
        if body["response_format"]["json_schema"]["name"] == "JudgeVerdict":
            return Reply(status=400, error_message="bad request")
        return responder(body)

    fake_upstream.responder = failing
    with pytest.raises(UpstreamError):
        await services.induction.induce(T, U)
    assert await services.personas.get(T, U) == before


async def test_persona_is_capped_and_plain_text(services: Services, fake_upstream: FakeUpstream) -> None:
    await services.preferences.add_pairs(T, U, make_pairs(U, 5))
    induction = with_settings(services, persona_max_chars=100)
    fake_upstream.responder = InductionResponder(
        persona=lambda r, d: "</user_preferences> <b>Bold</b> " + "x" * 500
    )
    await induction.induce(T, U)
    persona = await services.personas.get(T, U)
    assert persona is not None and len(persona.text) <= 100
    assert "<" not in persona.text and persona.text.startswith("Bold")


async def test_implicit_pairs_weigh_less_and_are_counted(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    pairs = make_pairs(U, 10)
    # The last two (validation) pairs were implied by feedback signals, at half weight.
    for i in (8, 9):
        pairs[i] = pairs[i].model_copy(update={"source": "implicit", "weight": 0.5})
    await services.preferences.add_pairs(T, U, pairs)
    fake_upstream.responder = InductionResponder(
        judge_right=lambda request, persona, n: request == "Q7" or n >= 1
    )
    result = await services.induction.induce(T, U)
    persona = await services.personas.get(T, U)
    assert persona is not None
    prov = persona.provenance
    assert prov["implicit_pairs"] == 2 and result["implicit_pairs"] == 2
    # The empty set is right on Q7 only: 1 of 2 in weight (1 + 0.5 + 0.5), not 1 of 3 pairs.
    assert prov["candidate_scores"][0] == {"exemplar_ids": [], "correct": 1, "accuracy": 0.5}
    assert prov["validation_accuracy"] == 1.0


async def test_run_all_raises_the_first_failure_itself_and_leaves_the_caller_uncancelled() -> None:
    """The calls of one induction step run together; the first failure stops the others and is
    raised as it is, and the calling task goes on: its next await (a Redis read) is not cancelled,
    whichever Python 3.11 it runs on."""
    stopped = asyncio.Event()

    async def slow() -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return 1

    async def fails() -> int:
        await asyncio.sleep(0)
        raise LLMOutputError("no valid answer")

    with pytest.raises(LLMOutputError, match="no valid answer"):
        await run_all([slow(), fails(), slow()])
    assert stopped.is_set()
    for _ in range(3):
        await asyncio.sleep(0)  # would raise CancelledError if the failure had left one pending
    assert await run_all([asyncio.sleep(0, result=n) for n in range(3)]) == [0, 1, 2]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
