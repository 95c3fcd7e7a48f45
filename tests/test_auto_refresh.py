"""With PERSONA_AUTO_REFRESH_AFTER=N, the Nth new pair enqueues a refresh at once."""

from __future__ import annotations

import httpx
import redis

from middleware.store import keys
from tests.induction_fakes import InductionResponder
from tests.jobs_support import drain, job_settings
from tests.support.fake_upstream import FakeUpstream
from tests.support.proxy import APP_KEY_A, start_proxy


def pair(n: int) -> dict[str, object]:
    return {
        "user": "carol",
        "context": [{"role": "user", "content": f"question {n}"}],
        "chosen": {"role": "assistant", "content": f"short {n}"},
        "rejected": {"role": "assistant", "content": f"a much longer answer {n}"},
    }


async def test_the_nth_pair_enqueues_a_refresh(redis_url: str, fake_upstream: FakeUpstream) -> None:
    fake_upstream.responder = InductionResponder()
    running = start_proxy(job_settings(redis_url, fake_upstream, auto_refresh_after=5))
    r = redis.Redis.from_url(redis_url)
    try:
        with httpx.Client(base_url=running.v1, headers={"Authorization": f"Bearer {APP_KEY_A}"}) as http:
            assert http.post("/preferences", json=[pair(n) for n in range(4)]).status_code == 201
            assert r.get(keys.job_pending("tenant-a", "carol")) is None
            assert http.post("/preferences", json=pair(4)).status_code == 201
            job_id: bytes | None = r.get(keys.job_pending("tenant-a", "carol"))  # type: ignore[assignment]
            assert job_id is not None
            # a duplicate write adds nothing and enqueues nothing new
            assert http.post("/preferences", json=pair(4)).status_code == 200
            assert r.get(keys.job_pending("tenant-a", "carol")) == job_id
        await drain(running.settings)
        job = httpx.get(f"{running.url}/admin/jobs/{job_id.decode()}", headers=running.admin_headers()).json()
        assert job["state"] == "complete"
        persona = httpx.get(f"{running.url}/admin/users/carol/persona", headers=running.admin_headers()).json()
        assert persona["version"] == 1 and persona["provenance"]["job_id"] == job_id.decode()
    finally:
        r.close()
        running.server.stop()
