"""A segment's persona induced as a job from its members' pooled pairs (capped per member), against the
suite's fake upstream; its provenance, rollback, and what forgetting a member does to later versions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import drain, job_settings, store_services
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import APP_KEY_A, RunningProxy, start_proxy
from tests.support.proxy import admin_client as client

T = "tenant-a"
CAP = 4


@pytest.fixture
async def sproxy(redis_url: str, fake_upstream: FakeUpstream) -> AsyncIterator[RunningProxy]:
    settings = job_settings(
        redis_url, fake_upstream, segment_pairs_per_member=CAP, persona_read_timeout_s=2.0
    )
    with start_proxy(settings) as running:
        yield running


async def test_segment_refresh_job_pools_members_pairs(
    sproxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    async with store_services(sproxy.settings) as services:
        await services.preferences.add_pairs(T, "alice", make_pairs("alice", 15))
        await services.preferences.add_pairs(T, "bob", make_pairs("bob", 3))
        await services.preferences.add_pairs(T, "carol", make_pairs("carol", 6))  # not a member
        alice_ids = {p.stable_id() for p in await services.preferences.pairs(T, "alice")}
        bob_ids = {p.stable_id() for p in await services.preferences.pairs(T, "bob")}
        carol_ids = {p.stable_id() for p in await services.preferences.pairs(T, "carol")}
    fake_upstream.responder = InductionResponder(
        persona=lambda requests, data: "SEGMENT-PERSONA " + str(len(requests))
    )
    with client(sproxy) as http:
        assert http.post("/admin/segments/crew/refresh").status_code == 404  # no such segment
        http.put("/admin/segments/crew", json={"description": "the crew"})
        assert http.post("/admin/segments/crew/refresh").status_code == 422  # no members yet
        for user in ("alice", "bob"):
            http.put(f"/admin/users/{user}/segment", json={"segment": "crew"})

        first = http.post("/admin/segments/crew/refresh")
        assert first.status_code == 202, first.text
        again = http.post("/admin/segments/crew/refresh").json()
        assert again["job_id"] == first.json()["job_id"] and again["deduplicated"] is True
        await drain(sproxy.settings)
        job = http.get(f"/admin/jobs/{first.json()['job_id']}").json()
        assert job["state"] == "complete", job
        assert job["segment"] == "crew" and job["result"]["version"] == 1

        persona = http.get("/admin/segments/crew").json()["persona"]
        assert persona["text"].startswith("SEGMENT-PERSONA")
        members = persona["provenance"]["members"]
        assert sorted(members) == ["alice", "bob"]
        assert len(members["alice"]) == CAP and set(members["alice"]) <= alice_ids  # capped
        assert set(members["bob"]) == bob_ids
        used = set(persona["provenance"]["source_preference_ids"])
        assert used == set(members["alice"]) | bob_ids and not used & carol_ids

        # The induced persona reaches a member's chat (they have none of their own).
        chat = openai.OpenAI(base_url=sproxy.v1, api_key=APP_KEY_A, max_retries=0)
        raw = chat.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}], user="bob"
        )
        assert raw.headers["x-persona-source"] == "segment" and raw.headers["x-persona-version"] == "1"
        assert "SEGMENT-PERSONA" in str(fake_upstream.chat_requests[-1].body)

        # Forgetting bob: out of the segment, and none of his pairs in the next version.
        assert http.delete("/admin/users/bob").status_code == 200
        assert http.get("/admin/segments/crew").json()["members"] == ["alice"]
        async with store_services(sproxy.settings) as services:
            await services.preferences.add_pairs(T, "dora", make_pairs("dora", 3))
        http.put("/admin/users/dora/segment", json={"segment": "crew"})
        second = http.post("/admin/segments/crew/refresh").json()
        await drain(sproxy.settings)
        assert http.get(f"/admin/jobs/{second['job_id']}").json()["state"] == "complete"
        later = http.get("/admin/segments/crew").json()["persona"]
        assert later["version"] == 2 and sorted(later["provenance"]["members"]) == ["alice", "dora"]
        assert not set(later["provenance"]["source_preference_ids"]) & bob_ids

        # Rollback brings version 1 back, byte for byte.
        back = http.post("/admin/segments/crew/persona/rollback", json={"version": 1}).json()
        assert back["persona"]["text"] == persona["text"] and back["persona"]["version"] == 1
        versions = http.get("/admin/segments/crew/persona/versions").json()
        assert [(v["version"], v["current"]) for v in versions] == [(1, True), (2, False)]
