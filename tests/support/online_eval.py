"""Helpers for online evaluation tests: personas the fake upstream can tell apart, runs, trials."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.fake_upstream import Reply
from tests.support.proxy import RunningProxy, app_client
from tests.support.proxy import admin_client as admin

USERS = ("alice", "bob", "carol")
PERSONA_RE = re.compile(r"STYLE-([a-z]+)")
PROMPT = [{"role": "user", "content": "Summarize: my cat learned to open the fridge."}]


def persona_responder(delay: float = 0.0) -> Callable[[dict[str, Any]], Reply]:
    """'answer for <user>' when <user>'s persona is in the system block, else 'plain answer'."""

    def respond(body: dict[str, Any]) -> Reply:
        system = " ".join(
            m["content"] for m in body["messages"] if m["role"] == "system" and isinstance(m["content"], str)
        )
        found = PERSONA_RE.search(system)
        text = f"answer for {found.group(1)}" if found else "plain answer"
        return Reply(content=text, delay=delay)

    return respond


def give_personas(proxy: RunningProxy, users: tuple[str, ...] = USERS, tenant: str = "tenant-a") -> None:
    with admin(proxy, tenant) as c:
        for user in users:
            resp = c.put(f"/admin/users/{user}/persona", json={"text": f"STYLE-{user}: likes short answers."})
            assert resp.status_code == 200, resp.text


def create_run(proxy: RunningProxy, users: tuple[str, ...] = USERS, **extra: Any) -> str:
    with admin(proxy) as c:
        resp = c.post("/admin/evaluations", json={"users": list(users), "model": "fake-model", **extra})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def trial(c: httpx.Client, run_id: str, user: str) -> dict[str, Any]:
    resp = c.post(f"/v1/evaluations/{run_id}/trials", json={"user": user, "messages": PROMPT})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def choose(c: httpx.Client, run_id: str, trial_id: str, choice: str, **extra: Any) -> httpx.Response:
    return c.post(f"/v1/evaluations/{run_id}/trials/{trial_id}/choice", json={"choice": choice, **extra})


def simulate(
    proxy: RunningProxy, run_id: str, chooser: Callable[[str, list[dict[str, Any]]], str], per_user: int
) -> None:
    with app_client(proxy) as c:
        for _ in range(per_user):
            for user in USERS:
                t = trial(c, run_id, user)
                resp = choose(c, run_id, t["id"], chooser(user, t["answers"]), rationale="because")
                assert resp.status_code == 201, resp.text


def prefers_own(user: str, answers: list[dict[str, Any]]) -> str:
    return str(next(a["label"] for a in answers if a["content"] == f"answer for {user}"))


def get_report(proxy: RunningProxy, run_id: str) -> dict[str, Any]:
    with admin(proxy) as c:
        resp = c.get(f"/admin/evaluations/{run_id}/report")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


# --- full runs ------------------------------------------------------------------------------------
