"""`persona induce USER` and the structured-call helper it relies on."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from middleware.errors import BudgetExceeded
from middleware.induction.cli_induce import run_induce
from middleware.llm import CallBudget, Usage, strict_schema
from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import store_services
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import proxy_settings


async def test_induce_command_runs_the_pipeline_with_progress(
    redis_url: str, fake_upstream: FakeUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = proxy_settings(redis_url, fake_upstream)
    async with store_services(settings) as services:
        await services.preferences.add_pairs("default", "carol", make_pairs("carol", 6))
        await services.preferences.add_pairs("default", "dave", make_pairs("dave", 2))
    fake_upstream.responder = InductionResponder()

    result = await run_induce(settings, tenant="default", user="carol", model="fake-model-large")
    assert result["status"] == "complete" and result["version"] == 1
    assert result["model"] == "fake-model-large" and result["cost"]["calls"] > 0
    assert {r.body["model"] for r in fake_upstream.chat_requests} == {"fake-model-large"}
    err = capsys.readouterr().err
    assert "bootstrap: 5/5" in err and "synthesize" in err and "store" in err

    short = await run_induce(settings, tenant="default", user="dave")
    assert short["status"] == "not_enough_data" and "at least 5" in short["message"]


class Pick(BaseModel):
    reasoning: str
    preferred: Literal["A", "B"]
    notes: list[str] = []


def test_strict_schema_closes_objects_and_requires_every_property() -> None:
    schema = strict_schema(Pick)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["reasoning", "preferred", "notes"]
    assert schema["properties"]["preferred"]["enum"] == ["A", "B"]


def test_call_budget_refuses_before_exceeding() -> None:
    budget = CallBudget(max_calls=2, max_tokens=1000)
    budget.reserve(400)
    budget.settle(400, Usage(calls=1, prompt_tokens=100, completion_tokens=50))
    with pytest.raises(BudgetExceeded, match="token budget"):
        budget.reserve(900)
    budget.reserve(800)
    budget.settle(800, Usage(calls=1, prompt_tokens=500, completion_tokens=100))
    with pytest.raises(BudgetExceeded, match="call budget"):
        budget.reserve(1)
    assert budget.snapshot()["calls"] == 2 and budget.snapshot()["total_tokens"] == 750
