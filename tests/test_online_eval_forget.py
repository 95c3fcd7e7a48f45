"""Forgetting a user reaches their evaluation trials too; exporting includes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from tests.support.fake_upstream import FakeUpstream
from tests.support.online_eval import (
    choose,
    create_run,
    give_personas,
    persona_responder,
    trial,
)
from tests.support.proxy import RunningProxy, app_client
from tests.support.proxy import admin_client as admin


def test_forget_and_export_cover_evaluation_trials(
    proxy: RunningProxy, fake_upstream: FakeUpstream, redis_url: str
) -> None:
    fake_upstream.responder = persona_responder()
    give_personas(proxy)
    run_id = create_run(proxy)
    with app_client(proxy) as c:
        mine = trial(c, run_id, "alice")
        assert choose(c, run_id, mine["id"], "A", rationale="alice's secret reason").status_code == 201
        theirs = trial(c, run_id, "bob")
        assert choose(c, run_id, theirs["id"], "B").status_code == 201

    with admin(proxy) as c:
        exported = c.get("/admin/users/alice/export").json()
        assert [t["id"] for t in exported["evaluation_trials"]] == [mine["id"]]
        assert exported["evaluation_trials"][0]["choice"]["rationale"] == "alice's secret reason"

        forgotten = c.delete("/admin/users/alice").json()
        assert forgotten["evaluation_trials_deleted"] == 1
        assert c.get("/admin/users/alice/export").json()["evaluation_trials"] == []
        remaining = c.get(f"/admin/evaluations/{run_id}/trials").json()["data"]
        assert [t["id"] for t in remaining] == [theirs["id"]]

    client = redis.Redis.from_url(redis_url)
    try:
        readers: dict[bytes, Callable[[Any], Any]] = {
            b"hash": client.hvals,
            b"list": lambda k: client.lrange(k, 0, -1),
            b"set": client.smembers,
            b"zset": lambda k: client.zrange(k, 0, -1),
            b"string": lambda k: [client.get(k) or b""],
        }
        for key in client.scan_iter(match="pm:evaluations:*"):
            values = readers[client.type(key)](key)  # type: ignore[index]
            assert not any(b"alice's secret reason" in v for v in values), key
    finally:
        client.close()
