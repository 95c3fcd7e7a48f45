"""Every store operation, and the proxy and worker, on a real Redis Cluster (3 masters + 3 replicas).

A script, transaction or multi-key command whose keys span slots fails on a cluster with CROSSSLOT
(or redis-py refuses it before sending); any such error fails these tests. Users are spread over
many slots, so cross-user operations (tenant indexes, forget's scans, the auto-refresh backstop,
evaluation runs) must visit every master to pass.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import openai
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline
from redis.crc import key_slot

from middleware.config import Settings
from middleware.errors import StoreUnavailable
from middleware.induction.jobs import enqueue_due_refreshes
from middleware.store import keys
from middleware.store.comparisons import Claim, ComparisonStore
from middleware.store.connection import RedisUrlError, create_redis, parse_redis_url
from middleware.store.contexts import HEAD_BYTES
from middleware.store.evaluations import EvaluationStore
from middleware.store.feedback import FeedbackStore
from middleware.store.guard import STORE_ERRORS, PersonaReadFailed
from middleware.store.policy import PolicyStore
from middleware.store.ratelimits import RateLimitStore
from middleware.store.response_owners import ResponseOwner, ResponseOwners
from middleware.store.segments import PersonaReader
from middleware.store.users import export_user, forget_user
from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import drain, job_settings, store_services
from tests.support.dropin import PERSONA_MARK, give_persona
from tests.support.fake_upstream import FakeUpstream
from tests.support.ports import free_port
from tests.support.proxy import APP_KEY_A, app_client, start_proxy
from tests.support.redis_topologies import LocalCluster, make_certificates

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.topology
T = "tenant-a"
USERS = [f"user-{i}" for i in range(12)]


def cluster_settings(cluster_url: str, jobs_url: str, upstream: FakeUpstream, **extra: Any) -> Settings:
    return job_settings(
        cluster_url,
        upstream,
        jobs_redis_url=jobs_url,
        redis_wait_replicas=1,
        redis_wait_timeout_ms=2000,
        **extra,
    )


async def every_key(cluster: LocalCluster) -> set[str]:
    found: set[str] = set()
    for node in cluster.masters():
        client = aioredis.Redis(host=node.host, port=node.port)
        found |= {k.decode() async for k in client.scan_iter(count=1000)}
        await client.aclose()
    return found


def test_the_users_are_spread_over_every_master(redis_cluster: LocalCluster) -> None:
    owners = {redis_cluster.master_of(keys.persona_current(T, u)).port for u in USERS}
    assert len(owners) == 3  # otherwise the cross-user tests below would not cross masters
    assert len({key_slot(keys.user_tag(T, u).encode()) for u in USERS}) == len(USERS)


async def test_every_store_operation_runs_on_a_cluster(
    cluster_url: str, redis_cluster: LocalCluster, redis_url: str, fake_upstream: FakeUpstream
) -> None:
    settings = cluster_settings(cluster_url, redis_url, fake_upstream, auto_refresh_after=2)
    async with store_services(settings) as services:
        r = services.redis
        # persona versions, adapters, rollback (scripts and MGET within one user's slot), replicated
        for user in USERS:
            await services.personas.save(T, user, f"v1 of {user}", [], {"source": "admin"})
            await services.personas.save(T, user, f"v2 of {user}", [], {})
            assert await services.personas.save_adapter(T, user, 2, b"\x01" * 32)
            assert await services.personas.adapters(T, user, [1, 2]) == {2: b"\x01" * 32}
            assert [p.version for p in await services.personas.list_versions(T, user)] == [1, 2]
            await services.personas.rollback(T, user, 1)
            assert await services.personas.read_current_blob(T, user) is not None
            # preferences: the idempotent script, counters
            flags = await services.preferences.add_pairs(T, user, make_pairs(user, 3))
            assert flags == [True, True, True]
            assert await services.preferences.add_pairs(T, user, make_pairs(user, 3)) == [False] * 3
            assert await services.preferences.pair_count(T, user) == 3
            await services.preferences.consume_since_refresh(T, user, 1)
            assert await services.preferences.pairs_since_refresh(T, user) == 2
        # the tenant index and facts over users of every master (one plain pipeline)
        assert await services.users.members(T) == sorted(USERS)
        assert await services.users.persona_and_preferences(T, USERS) == [(True, 3)] * len(USERS)
        assert sorted([u async for _, u in services.users.all_users()]) == sorted(USERS)

        # quotas: the admission script and the persona read in one pipeline (two slots)
        limits = RateLimitStore(r)
        call = RateLimitStore.admit_call(
            T, USERS[0], cost=1, rpm=100, user_rpm=10, concurrency=5, lease="l1", lease_ms=60_000,
            tokens_per_day=1000, day="20260101", ms_to_day_end=1000,
        )  # fmt: skip
        reason, _, reads, _ = await limits.admit_and_read(call, T, USERS[0], None)
        stored = await r.get(keys.persona_current(T, USERS[0]))
        # the read brings the head of the blob; the whole of it is read on the user's slot
        assert reason == 0 and reads.own == stored[:HEAD_BYTES] and len(stored) > HEAD_BYTES
        whole = await PersonaReader(r).whole(reads, "own")
        assert whole is not None and whole == stored and b"v1 of user-0" in whole
        # the segment resolution script's keys share the tenant's slot
        assert key_slot(keys.segment_members(T).encode()) == key_slot(
            keys.tenant_default_line(T).current.encode()
        )
        assert (await limits.admit(call))[0] == 0
        await limits.record_calls(T, 3, rpm=100)
        await limits.add_tokens(T, "20260101", 42)
        assert await limits.tokens_used(T, "20260101") == 42
        await limits.release(T, "l1")
        assert await limits.reserve_pending(T, USERS[1], "c1", limit=2, ttl_s=60) == 0
        await limits.drop_pending(T, USERS[1], "c1")

        # comparisons: claim and finalize scripts, the owner index in another slot
        comparisons = ComparisonStore(r, ttl_s=600)
        await comparisons.save(T, USERS[2], "cmp1", {"candidates": []})
        assert await comparisons.owner("cmp1") == (T, USERS[2])
        assert await comparisons.claim(T, USERS[2], "cmp1", "tok") == Claim.OK
        finalized = await comparisons.finalize(
            T, USERS[2], "cmp1", "tok", judged={"best": 0}, judgement_new=True, session_id="s1",
            expected_session_len=0, append=[{"role": "user", "content": "q"}],
        )  # fmt: skip
        assert finalized == 1 and await comparisons.session_messages(T, USERS[2], "s1") == [
            {"role": "user", "content": "q"}
        ]
        assert await comparisons.claim(T, USERS[2], "cmp1", "tok2") == Claim.JUDGED

        # jobs: records (script), pending marks, locks, slots; the queue on the job queue's Redis
        job_id, created = await services.jobs.enqueue_refresh(T, USERS[3])
        assert created and (await services.jobs.record(job_id) or {})["state"] == "queued"
        assert await services.jobs.enqueue_refresh(T, USERS[3]) == (job_id, False)
        assert await services.jobs.store.acquire_lock(T, USERS[3], job_id, 10_000)
        assert await services.jobs.store.acquire_slot(T, job_id, 2, 10_000)
        await services.jobs.store.release_slot(T, job_id)
        await services.jobs.store.release_lock(T, USERS[3], job_id)
        assert (await services.jobs.cancel(job_id) or {})["state"] == "failed"
        # the auto-refresh backstop scans every master's tenant indexes
        # (every user has 2 new pairs; USERS[3]'s cancelled job no longer holds their pending mark)
        due = await enqueue_due_refreshes(settings, services.users, services.preferences, services.jobs)
        assert due == len(USERS)

        # online evaluation runs and Responses owners
        evaluations = EvaluationStore(r)
        await evaluations.create_run(T, {"id": "run1", "created": 1.0, "users": USERS[:3]})
        for i, user in enumerate(USERS[:3]):
            await evaluations.save_trial(T, "run1", {"id": f"t{i}", "user": user, "other_user": USERS[0]})
        assert await evaluations.record_choice(T, "run1", "t1", {"label": "A"})
        assert len(await evaluations.trials(T, "run1")) == 3
        # context personas (one-slot pipeline), feedback records and signals, the policy's posteriors
        await services.contexts.save(T, USERS[4], "cooking", "likes recipes short", [], {})
        assert list(await services.contexts.current(T, USERS[4])) == ["cooking"]
        feedback, policy = FeedbackStore(r, ttl_s=600), PolicyStore(r)
        feedback.write_later(lambda: [(T, USERS[4], "resp_fb", b'{"arm": "inject"}')])
        await feedback.drain()
        assert await feedback.owner("resp_fb") == (T, USERS[4])
        added = await feedback.add_signal(T, USERS[4], "resp_fb", "s1", b"{}", 1.0)
        assert added is not None and added.new
        marked = await feedback.mark_prompt(T, USERS[4], "d1", "resp_fb", "up")
        assert (marked.before, marked.latest) == (None, {"resp_fb": "up"})
        pair_record = ("implicit_1", "pair", {"id": "implicit_1"})
        assert await services.preferences.add(T, USERS[4], [pair_record]) == [True]
        assert await services.preferences.withdraw(T, USERS[4], ["implicit_1", "nope"]) == ["implicit_1"]
        for user in USERS:
            await policy.reward(T, user, "inject", 1.0, discount=1.0, tenant_discount=1.0, ttl_ms=60_000)
        assert (await policy.tenant_posteriors(T))["inject"].pulls == len(USERS)
        await limits.keep_pending(T, USERS[1], "c2", expires_at_ms=int(time.time() * 1000) + 60_000)

        # segments: the index, assignments and the persona line in the tenant's segments slot
        await services.segments.put(T, "field", "field workers")
        await services.segments.assign_many(T, {USERS[0]: "field", USERS[1]: "field"})
        await services.personas.save_line(keys.segment_line(T, "field"), "segment persona", [], {})
        assert await services.segments.members(T, "field") == sorted(USERS[:2])
        assert await services.segments.delete(T, "field")
        assert await services.segments.get(T, "field") is None
        assert await services.segments.assigned(T, USERS[0]) is None
        assert not [k for k in await every_key(redis_cluster) if keys.segment_base(T, "field") in k]

        owners = ResponseOwners(r, ttl_s=60)
        owners.record_later("resp_1", ResponseOwner(T, True, 3))
        assert await owners.owner("resp_1") == ResponseOwner(T, True, 3)

        # export and forget: SCAN on every master, deletes split by slot
        exported = await export_user(r, T, USERS[2])
        assert exported["persona"]["text"] == "v1 of user-2" and exported["sessions"]["s1"]
        forgotten = await forget_user(r, T, USERS[2], services.jobs_redis)
        assert forgotten["deleted_keys"] >= 6 and forgotten["deleted_comparison_owners"] == 1
        assert not [k for k in await every_key(redis_cluster) if keys.user_tag(T, USERS[2]) in k]
        assert USERS[2] not in await services.users.members(T)


async def test_the_proxy_and_a_worker_on_a_cluster(
    cluster_url: str, redis_cluster: LocalCluster, redis_url: str, fake_upstream: FakeUpstream
) -> None:
    """Chat, Responses, preference writes, a refresh job, export and forget through the real proxy."""
    fake_upstream.responder = InductionResponder()
    settings = cluster_settings(cluster_url, redis_url, fake_upstream)
    with start_proxy(settings) as proxy:
        api = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
        for user in USERS[:6]:
            give_persona(proxy, user)
            chat = api.chat.completions.with_raw_response.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}], user=user
            )
            assert chat.headers["x-persona-version"] == "1"
            assert PERSONA_MARK in str(fake_upstream.chat_requests[-1].body["messages"])
            response = api.responses.with_raw_response.create(model="fake-model", input="hi", user=user)
            assert response.headers["x-persona-version"] == "1"
        with app_client(proxy) as c:
            for pair in make_pairs(USERS[0], 6):
                body = {
                    "user": USERS[0],
                    **pair.model_dump(mode="json", include={"context", "chosen", "rejected"}),
                }
                written = c.post("/v1/preferences", json=body)
                assert written.status_code == 201, written.text
        admin = httpx.Client(base_url=proxy.url, headers=proxy.admin_headers(T), timeout=10)
        refresh = admin.post(f"/admin/users/{USERS[0]}/persona/refresh")
        assert refresh.status_code == 202, refresh.text
        job_id = refresh.json()["job_id"]
        await drain(settings)
        assert admin.get(f"/admin/jobs/{job_id}").json()["state"] == "complete"
        assert admin.get(f"/admin/users/{USERS[0]}/persona").json()["version"] == 2
        exported = admin.get(f"/admin/users/{USERS[0]}/export").json()
        assert len(exported["preferences"]) == 6 and [j["id"] for j in exported["jobs"]] == [job_id]
        assert admin.delete(f"/admin/users/{USERS[0]}").json()["deleted_jobs"] == 1
        assert admin.get(f"/admin/users/{USERS[0]}/persona").status_code == 404
        admin.close()
    assert not [k for k in await every_key(redis_cluster) if keys.user_tag(T, USERS[0]) in k or job_id in k]
    queue = redis.Redis.from_url(redis_url)
    assert not [k for k in queue.scan_iter(count=1000) if job_id.encode() in k]
    queue.close()


def test_a_cluster_is_refused_for_the_job_queue(cluster_url: str) -> None:
    with pytest.raises(ValueError, match="cannot run on a Redis Cluster"):
        Settings(redis_url=cluster_url, embedded_redis=False)
    with pytest.raises(ValueError, match="PERSONA_JOBS_REDIS_URL"):
        Settings(redis_url="redis://127.0.0.1:1/0", jobs_redis_url=cluster_url, embedded_redis=False)


def test_redis_urls() -> None:
    cluster = parse_redis_url(
        "rediss+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001?ssl_ca_certs=/ca.pem"
    )
    assert (cluster.topology, cluster.tls, cluster.username, cluster.password) == (
        "cluster",
        True,
        "app",
        "s@cret",
    )
    assert (
        cluster.nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
        and cluster.options["ssl_ca_certs"] == "/ca.pem"
    )
    sentinel = parse_redis_url("redis+sentinel://:pw@s1:26379,[::1]:26380/mymaster/2?sentinel_password=x")
    assert (sentinel.topology, sentinel.master, sentinel.db, sentinel.password) == (
        "sentinel",
        "mymaster",
        2,
        "pw",
    )
    assert sentinel.nodes == [("s1", 26379), ("::1", 26380)] and sentinel.options["sentinel_password"] == "x"
    assert parse_redis_url("redis://h:6380/3").db == 3
    for bad in (
        "redis+sentinel://h:1",
        "redis+cluster://h:1/2",
        "redis://a:1,b:2",
        "memcached://h",
        "redis://h:x",
    ):
        with pytest.raises(RedisUrlError):
            parse_redis_url(bad)


async def test_a_password_protected_cluster(fake_upstream: FakeUpstream) -> None:
    """An ACL user and password in the URL reach every node."""
    with LocalCluster(password="n0de-secret") as cluster:
        settings = Settings(
            redis_url=f"redis+cluster://default:n0de-secret@{cluster.url.split('://', 1)[1]}",
            jobs_redis_url="redis://127.0.0.1:1/0",
            embedded_redis=False,
        )
        r = create_redis(settings)
        await r.set(keys.persona_current(T, "u"), b"x")
        assert await r.get(keys.persona_current(T, "u")) == b"x"
        await r.aclose()
        wrong = create_redis(Settings(redis_url=cluster.url, jobs_redis_url=settings.jobs_redis_url))
        with pytest.raises(STORE_ERRORS):
            await asyncio.wait_for(wrong.get("k"), 5)
        await wrong.aclose()


async def test_a_cluster_over_tls(tmp_path: Path) -> None:
    """rediss+cluster:// with the CA in the URL: every node is reached over TLS (the plain ports are
    never named), and a client that does not trust the CA is refused."""
    with LocalCluster(tls=make_certificates(tmp_path)) as cluster:
        settings = Settings(
            redis_url=cluster.tls_url, jobs_redis_url="redis://127.0.0.1:1/0", embedded_redis=False
        )
        r = create_redis(settings)
        for user in USERS:
            await r.set(keys.persona_current(T, user), user.encode())
        assert [await r.get(keys.persona_current(T, u)) for u in USERS] == [u.encode() for u in USERS]
        assert {node.port for node in r.get_nodes()} <= set(cluster.tls_ports)  # type: ignore[attr-defined]
        await r.aclose()
        untrusted = create_redis(
            Settings(redis_url=cluster.tls_url.split("?")[0], jobs_redis_url=settings.jobs_redis_url)
        )
        with pytest.raises(STORE_ERRORS):
            await asyncio.wait_for(untrusted.get("k"), 10)
        await untrusted.aclose()


def _free_block() -> int:
    """A base port whose neighbours the example uses (base..base+20, base+100..base+105) are free."""
    for _ in range(50):
        base = random.randrange(20_000, 30_000)
        wanted = [*range(base, base + 21), *range(base + 100, base + 106)]
        if all(_bindable(p) for p in wanted):
            return base
    raise RuntimeError("no free block of ports")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_cluster_example_runs_as_written() -> None:
    """examples/cluster_local.sh: a cluster, a queue Redis, two proxies and a worker; a persona written
    through one proxy is used by the other."""
    env = {
        **os.environ,
        "BASE_PORT": str(_free_block()),
        "PROXY_1_PORT": str(free_port()),
        "PROXY_2_PORT": str(free_port()),
    }
    env.pop("PERSONA_UPSTREAM_API_BASE", None)
    done = subprocess.run(
        ["bash", str(ROOT / "examples" / "cluster_local.sh"), "--check"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "x-persona-version 1" in done.stdout and done.stdout.rstrip().endswith("ok")


async def test_a_cluster_pipeline_broken_mid_failover_is_a_store_fault(
    cluster_url: str, redis_cluster: LocalCluster, redis_url: str, fake_upstream: FakeUpstream
) -> None:
    """redis-py's cluster pipeline can fail with an AttributeError mid-failover (a failed command
    while it has no default node): every pipeline of the cluster client fails as the store fails,
    so the chat path's read fails open and a write answers 503, where both answered 500 before."""
    settings = cluster_settings(cluster_url, redis_url, fake_upstream)
    broken = AttributeError("'NoneType' object has no attribute 'name'")
    async with store_services(settings) as services:
        await services.personas.save(T, USERS[0], "a persona", [], {"source": "admin"})  # slots known
        with mock.patch.object(ClusterPipeline, "_execute", side_effect=broken):
            with pytest.raises(PersonaReadFailed, match="mid-failover"):
                await PersonaReader(services.redis).read(T, USERS[0], None)
            with pytest.raises(StoreUnavailable):
                await services.contexts.clear(T, USERS[0], "cooking")
