"""client.evaluations (sync and async): a whole blind evaluation run through the SDK."""

from __future__ import annotations

import openai
import pytest

from middleware.sdk import AsyncPersonalizedOpenAI, PersonalizedOpenAI
from tests.support.fake_upstream import FakeUpstream
from tests.support.online_eval import USERS, give_personas, persona_responder
from tests.support.proxy import ADMIN_KEY, APP_KEY_A, RunningProxy


def clients(proxy: RunningProxy, user: str | None = None) -> dict[str, object]:
    return {
        "base_url": proxy.v1,
        "api_key": APP_KEY_A,
        "user": user,
        "admin_key": ADMIN_KEY,
        "tenant": "tenant-a",
    }


def test_sync_sdk_runs_an_evaluation_end_to_end(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.responder = persona_responder()
    give_personas(proxy)
    with PersonalizedOpenAI(**clients(proxy, "alice")) as client:  # type: ignore[arg-type]
        run = client.evaluations.create(users=list(USERS), model="fake-model", name="sdk")
        assert run["users"] == list(USERS)
        for user in USERS:
            for _ in range(2):
                trial = client.evaluations.trial(run["id"], prompt="Summarize this.", user=user)
                assert [a.label for a in trial.answers] == ["A", "B", "C"]
                mine = next(a.label for a in trial.answers if a.content == f"answer for {user}")
                chosen = client.evaluations.choose(run["id"], trial.id, mine, rationale="mine", user=user)  # type: ignore[arg-type]
                assert chosen.choice == mine
        with pytest.raises(openai.ConflictError):
            client.evaluations.choose(run["id"], trial.id, "tie", user="carol")
        with pytest.raises(openai.NotFoundError):  # as alice (the client's user): not her trial
            client.evaluations.choose(run["id"], trial.id, "tie")
        report = client.evaluations.report(run["id"])
        assert report["pooled"]["wins"] == {"own": 6, "other": 0, "baseline": 0}
        assert client.evaluations.get(run["id"])["trials"] == 6
        assert len(client.evaluations.trials(run["id"])) == 6
        assert client.evaluations.report_png(run["id"]).startswith(b"\x89PNG")
        with pytest.raises(ValueError):
            client.evaluations.trial(run["id"], prompt="x", messages=[{"role": "user", "content": "y"}])


async def test_async_sdk_trial_and_choice(proxy: RunningProxy, fake_upstream: FakeUpstream) -> None:
    fake_upstream.responder = persona_responder()
    give_personas(proxy)
    async with AsyncPersonalizedOpenAI(**clients(proxy, "bob")) as client:  # type: ignore[arg-type]
        run = await client.evaluations.create(users=["alice", "bob"], model="fake-model")
        trial = await client.evaluations.trial(run["id"], messages=[{"role": "user", "content": "Hi"}])
        assert trial.user == "bob" and len(trial.answers) == 3
        assert (await client.evaluations.choose(run["id"], trial.id, "skip")).choice == "skip"
        report = await client.evaluations.report(run["id"])
        assert report["pooled"]["skips"] == 1 and report["pooled"]["decided"] == 0
        with pytest.raises(openai.PermissionDeniedError):
            await client.evaluations.trial(run["id"], prompt="Hi", user="carol")
        assert (await client.evaluations.close(run["id"]))["status"] == "closed"
