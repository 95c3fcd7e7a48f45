"""Online own / other / baseline evaluation runs: full runs against real Redis and the fake upstream.

The fake upstream tells the three answers apart by the persona block it receives: an answer written
"for <user>" when that user's persona is in the system block, a plain answer without one. A simulated
user chooses through the API only, seeing nothing but the labels A, B, C and the answer texts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware.evaluation.online import CHANCE
from middleware.evaluation.online_cli import run_report
from tests.support.artifacts import artifacts_dir
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.online_eval import (
    PROMPT,
    USERS,
    choose,
    create_run,
    get_report,
    give_personas,
    persona_responder,
    prefers_own,
    simulate,
    trial,
)
from tests.support.proxy import APP_KEY_A, APP_KEY_B, RunningProxy, app_client
from tests.support.proxy import admin_client as admin


def test_a_user_who_prefers_their_own_persona_shows_own_winning_above_chance(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.responder = persona_responder()
    give_personas(proxy)
    run_id = create_run(proxy, name="prefers own")
    simulate(proxy, run_id, prefers_own, per_user=6)

    report = get_report(proxy, run_id)
    pooled = report["pooled"]
    assert pooled["trials"] == pooled["decided"] == 18
    assert pooled["wins"] == {"own": 18, "other": 0, "baseline": 0}
    own = pooled["win_rate"]["own"]
    assert own["rate"] == 1.0 and own["ci_low"] > CHANCE
    assert pooled["own_above_chance"] is True
    for test in ("own_vs_baseline", "own_vs_other"):
        assert pooled["tests"][test]["p_value"] < 1e-4, pooled["tests"][test]
        assert pooled["tests"][test]["better"] == "own"
    assert [u["user"] for u in report["per_user"]] == list(USERS)
    for row in report["per_user"]:
        assert row["wins"]["own"] == 6 and row["win_rate"]["own"]["ci_low"] > CHANCE
        assert row["tests"]["own_vs_baseline"]["p_value"] == pytest.approx(2 * 0.5**6)
    # Six trials per user walk through all six orders: every condition sat twice at every label per user.
    assert report["positions"]["assigned"] == {
        label: {"own": 6, "other": 6, "baseline": 6} for label in "ABC"
    }
    assert report["positions"]["max_cell_difference"] == 0
    assert sum(report["other_personas"].values()) == 18
    assert set(report["other_personas"]) <= set(USERS)


def test_a_condition_blind_chooser_shows_no_difference_and_keeps_ties_and_skips(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    """A user who always picks whatever is shown first (then ties and skips) learns nothing about the
    conditions: position balancing turns that into exactly equal wins."""
    fake_upstream.responder = persona_responder()
    give_personas(proxy)
    run_id = create_run(proxy)
    seen: dict[str, int] = {}

    def first_shown_then_ties_and_skips(user: str, _answers: list[dict[str, Any]]) -> str:
        k = seen[user] = seen.get(user, -1) + 1
        if k < 6:  # the user's first block of six trials: every condition sits at A twice
            return "A"
        return "tie" if k % 2 else "skip"

    simulate(proxy, run_id, first_shown_then_ties_and_skips, per_user=12)

    report = get_report(proxy, run_id)
    pooled = report["pooled"]
    assert pooled["trials"] == 36
    assert pooled["ties"] == 9 and pooled["skips"] == 9 and pooled["decided"] == 18
    assert pooled["wins"] == {"own": 6, "other": 6, "baseline": 6}
    for test in ("own_vs_baseline", "own_vs_other"):
        assert pooled["tests"][test]["p_value"] > 0.05, pooled["tests"][test]
        assert pooled["tests"][test]["significant"] is False
    own = pooled["win_rate"]["own"]
    assert own["ci_low"] < CHANCE < own["ci_high"]
    assert pooled["own_above_chance"] is False
    assert report["positions"]["max_cell_difference"] == 0  # 12 trials per user: two full blocks


def test_three_answers_run_concurrently_and_reveal_nothing_about_their_conditions(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.responder = persona_responder(delay=0.4)
    give_personas(proxy)
    run_id = create_run(proxy)
    with app_client(proxy) as c:
        started = time.perf_counter()
        t = trial(c, run_id, "alice")
        wall = time.perf_counter() - started
    # concurrent: the fake upstream (in this process) got all three within a moment, where calls
    # one after another would be 0.4 s apart; and the trial took well under three delays
    received = [r.received_at for r in fake_upstream.chat_requests]
    assert len(received) == 3 and max(received) - min(received) < 0.3, received
    assert wall < 1.2, wall
    assert set(t) == {"id", "object", "evaluation_id", "user", "created", "answers"}
    assert [set(a) for a in t["answers"]] == [{"label", "content"}] * 3
    assert [a["label"] for a in t["answers"]] == ["A", "B", "C"]
    contents = sorted(a["content"] for a in t["answers"])
    assert "answer for alice" in contents and "plain answer" in contents
    other = next(x for x in contents if x not in ("answer for alice", "plain answer"))
    assert other in ("answer for bob", "answer for carol")

    requests = fake_upstream.chat_requests
    assert len(requests) == 3
    blocks = [[m for m in r.messages if "<user_preferences>" in str(m.get("content"))] for r in requests]
    assert sorted(len(b) for b in blocks) == [0, 1, 1]
    # The prompt itself reaches the upstream unchanged in all three.
    assert all(r.messages[-1] == PROMPT[0] for r in requests)

    # The stored trial keeps the order, the drawn user and the persona versions used.
    with admin(proxy) as c:
        stored = c.get(f"/admin/evaluations/{run_id}/trials").json()["data"]
    assert len(stored) == 1
    s = stored[0]
    assert sorted(s["order"]) == ["baseline", "other", "own"]
    assert s["answers"]["own"]["persona_user"] == "alice" and s["answers"]["own"]["persona_version"] == 1
    assert s["answers"]["other"]["persona_user"] == s["other_user"] != "alice"
    assert s["answers"]["baseline"]["persona_version"] is None
    labelled = {a["label"]: a["content"] for a in t["answers"]}
    assert labelled == {label: s["answers"][s["order"][i]]["content"] for i, label in enumerate("ABC")}


def test_choices_are_recorded_once_with_everything_needed_for_analysis(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.responder = persona_responder()
    give_personas(proxy)
    run_id = create_run(proxy)
    with app_client(proxy) as c:
        t = trial(c, run_id, "bob")
        label = prefers_own("bob", t["answers"])
        first = choose(c, run_id, t["id"], label, rationale="sounds like me")
        assert first.status_code == 201, first.text
        assert first.json()["choice"] == label and "condition" not in first.json()
        again = choose(c, run_id, t["id"], "tie")
        assert again.status_code == 409 and again.json()["error"]["code"] == "already_chosen"
        assert choose(c, run_id, "trl_" + "0" * 32, "A").status_code == 404
        assert choose(c, run_id, t["id"], "D").status_code == 422
        # Someone else naming themselves as the user cannot answer bob's trial.
        other_user = choose(c, run_id, trial(c, run_id, "bob")["id"], "A", user="alice")
        assert other_user.status_code == 404
    with app_client(proxy, APP_KEY_B) as c:  # another tenant sees neither the run nor the trial
        assert choose(c, run_id, t["id"], "A").status_code == 404
        assert (
            c.post(f"/v1/evaluations/{run_id}/trials", json={"user": "bob", "messages": PROMPT}).status_code
            == 404
        )

    with admin(proxy) as c:
        stored = {s["id"]: s for s in c.get(f"/admin/evaluations/{run_id}/trials").json()["data"]}
        status = c.get(f"/admin/evaluations/{run_id}").json()
    choice = stored[t["id"]]["choice"]
    assert choice["choice"] == label and choice["condition"] == "own"
    assert choice["rationale"] == "sounds like me" and choice["seconds_to_choose"] >= 0
    assert choice["order"] == stored[t["id"]]["order"]
    assert status["trials"] == 2 and status["pending"] == 1
    assert status["progress"]["bob"] == {"trials": 2, "chosen": 1, "ties": 0, "skips": 0}
    assert "order_seed" not in status


def test_pending_ties_and_skips_are_counted_not_dropped(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.responder = persona_responder()
    give_personas(proxy)
    run_id = create_run(proxy)
    with app_client(proxy) as c:
        assert choose(c, run_id, trial(c, run_id, "alice")["id"], "tie").status_code == 201
        assert choose(c, run_id, trial(c, run_id, "alice")["id"], "skip").status_code == 201
        trial(c, run_id, "alice")  # never answered
    report = get_report(proxy, run_id)
    alice = report["per_user"][0]
    assert (alice["trials"], alice["decided"], alice["ties"], alice["skips"], alice["pending"]) == (
        3,
        0,
        1,
        1,
        1,
    )
    assert alice["win_rate"]["own"] == {"rate": None, "ci_low": None, "ci_high": None}
    assert [r["trials"] for r in report["per_user"]] == [3, 0, 0]  # every user of the run is listed


# --- validation and access ------------------------------------------------------------------------
def test_creating_a_run_needs_two_users_with_personas_and_the_admin_key(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    give_personas(proxy, ("alice", "bob"))
    with admin(proxy) as c:
        one = c.post("/admin/evaluations", json={"users": ["alice"], "model": "fake-model"})
        assert one.status_code == 422
        no_persona = c.post("/admin/evaluations", json={"users": ["alice", "zoe"], "model": "fake-model"})
        assert no_persona.status_code == 422 and "zoe" in no_persona.json()["error"]["message"]
        dup = c.post("/admin/evaluations", json={"users": ["alice", "alice"], "model": "fake-model"})
        assert dup.status_code == 422
        ok = c.post(
            "/admin/evaluations", json={"users": ["alice", "bob"], "model": "fake-model", "name": "n"}
        )
        assert ok.status_code == 201
        run = ok.json()
        assert run["users"] == ["alice", "bob"] and run["status"] == "open" and "order_seed" not in run
        assert run["persona_versions_at_creation"] == {"alice": 1, "bob": 1}
        assert [r["id"] for r in c.get("/admin/evaluations").json()["data"]] == [run["id"]]
    with admin(proxy, "tenant-b") as c:  # the admin names another tenant: the run is not there
        assert c.get(f"/admin/evaluations/{run['id']}").status_code == 404
        assert c.get(f"/admin/evaluations/{run['id']}/report").status_code == 404
    with app_client(proxy) as c:  # an app key is not the admin key
        assert c.post("/admin/evaluations", json={"users": ["alice", "bob"], "model": "m"}).status_code == 403
        assert c.get(f"/admin/evaluations/{run['id']}/report").status_code == 403
    with httpx.Client(base_url=proxy.url) as c:
        assert c.get(f"/admin/evaluations/{run['id']}").status_code == 401


def test_users_outside_the_run_and_closed_runs_are_refused(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.responder = persona_responder()
    give_personas(proxy, ("alice", "bob", "carol"))
    run_id = create_run(proxy, ("alice", "bob"))
    with app_client(proxy) as c:
        outsider = c.post(f"/v1/evaluations/{run_id}/trials", json={"user": "carol", "messages": PROMPT})
        assert outsider.status_code == 403 and outsider.json()["error"]["code"] == "user_not_in_evaluation"
        missing = c.post(f"/v1/evaluations/ev_{'0' * 32}/trials", json={"user": "alice", "messages": PROMPT})
        assert missing.status_code == 404
        with admin(proxy) as a:
            assert a.post(f"/admin/evaluations/{run_id}/close").json()["status"] == "closed"
        closed = c.post(f"/v1/evaluations/{run_id}/trials", json={"user": "alice", "messages": PROMPT})
        assert closed.status_code == 409
        with admin(proxy) as a:
            assert a.post(f"/admin/evaluations/{run_id}/reopen").json()["status"] == "open"
            # bob's persona is switched off: alice has nobody to compare with.
            assert a.delete("/admin/users/bob/persona").status_code == 200
        lonely = c.post(f"/v1/evaluations/{run_id}/trials", json={"user": "alice", "messages": PROMPT})
        assert lonely.status_code == 422
    assert len(fake_upstream.chat_requests) == 0


def test_a_failed_answer_fails_the_trial_and_stores_nothing(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        has_block = any("<user_preferences>" in str(m.get("content")) for m in body["messages"])
        return Reply(content="fine") if has_block else Reply(status=400, error_message="bad baseline")

    fake_upstream.responder = respond
    give_personas(proxy)
    run_id = create_run(proxy)
    with app_client(proxy) as c:
        resp = c.post(f"/v1/evaluations/{run_id}/trials", json={"user": "alice", "messages": PROMPT})
    assert resp.status_code == 400 and "bad baseline" in resp.json()["error"]["message"]
    with admin(proxy) as c:
        assert c.get(f"/admin/evaluations/{run_id}").json()["trials"] == 0


# --- the chart and the command line ---------------------------------------------------------------
async def test_report_png_and_the_cli_report(
    proxy: RunningProxy, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    fake_upstream.responder = persona_responder()
    give_personas(proxy)
    run_id = create_run(proxy, name="figure 4")
    simulate(proxy, run_id, prefers_own, per_user=2)
    async with httpx.AsyncClient(base_url=proxy.url, headers=proxy.admin_headers(), timeout=20) as c:
        png = await c.get(f"/admin/evaluations/{run_id}/report.png")
        also_png = await c.get(f"/admin/evaluations/{run_id}/report", params={"format": "png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n") and len(png.content) > 10_000
    assert also_png.content.startswith(b"\x89PNG")
    (artifacts_dir("online_eval") / "report.png").write_bytes(png.content)

    out, plot = tmp_path / "report.json", tmp_path / "chart.png"
    result = await run_report(proxy.settings, tenant="tenant-a", evaluation_id=run_id, out=out, plot=plot)
    assert result["pooled"]["wins"]["own"] == 6
    assert out.exists() and plot.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(Exception, match="not found"):
        await run_report(proxy.settings, tenant="tenant-b", evaluation_id=run_id)


def test_persona_report_command_prints_and_writes_the_report(
    proxy: RunningProxy, fake_upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from middleware.cli import app

    fake_upstream.responder = persona_responder()
    give_personas(proxy)
    run_id = create_run(proxy)
    simulate(proxy, run_id, prefers_own, per_user=1)
    monkeypatch.setenv("PERSONA_REDIS_URL", proxy.settings.redis_url)
    out, plot = tmp_path / "r.json", tmp_path / "r.png"
    result = CliRunner().invoke(
        app, ["report", run_id, "--tenant", "tenant-a", "--out", str(out), "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["pooled"]["wins"] == {"own": 3, "other": 0, "baseline": 0}
    assert json.loads(out.read_text())["evaluation"]["id"] == run_id
    assert plot.read_bytes().startswith(b"\x89PNG")


async def test_forgetting_a_user_removes_their_trials_and_their_name_from_runs(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    from redis.asyncio import Redis

    from middleware.store.evaluations import EvaluationStore

    fake_upstream.responder = persona_responder()
    give_personas(proxy, ("alice", "bob"))
    run_id = create_run(proxy, ("alice", "bob"))
    async with httpx.AsyncClient(base_url=proxy.url, headers={"Authorization": f"Bearer {APP_KEY_A}"}) as c:
        for user in ("alice", "bob"):
            resp = await c.post(f"/v1/evaluations/{run_id}/trials", json={"user": user, "messages": PROMPT})
            assert resp.status_code == 201
    redis = Redis.from_url(proxy.settings.redis_url)
    try:
        store = EvaluationStore(redis)
        result = await store.forget_user("tenant-a", "bob")
        trials = await store.trials("tenant-a", run_id)
        run = await store.run("tenant-a", run_id)
    finally:
        await redis.aclose()
    assert result == {"evaluation_trials_deleted": 1, "evaluation_trials_redacted": 1, "evaluation_runs": 1}
    assert [t["user"] for t in trials] == ["alice"]
    assert trials[0]["other_user"] is None and trials[0]["answers"]["other"]["persona_user"] is None
    assert trials[0]["answers"]["other"]["persona_version_id"] is None
    assert run is not None and run["users"] == ["alice"]
    assert "bob" not in run["persona_versions_at_creation"]
