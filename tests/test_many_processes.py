"""More than one process against one Redis: `persona serve --workers 2` adds its processes' metrics up,
two proxies share one tenant's rate limit and see a persona update at once, and two `persona worker`
processes run each job once."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from middleware.induction.queue import JobQueue
from tests.induction_fakes import InductionResponder, make_pairs
from tests.jobs_support import job_settings, store_services
from tests.support.fake_upstream import FakeUpstream
from tests.support.metrics import sample, sample_in
from tests.support.processes import ServeProcess, process_env, serving, workers
from tests.support.proxy import ADMIN_KEY, APP_KEY_A

pytestmark = pytest.mark.slow
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def fresh_connections() -> httpx.Client:
    """A client that opens a new connection per request, so the kernel hands each to any worker."""
    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=30)


def chats_per_process(folder: Path) -> dict[int, float]:
    """The chat calls each process counted, read from its own file of the multiprocess folder."""
    counted: dict[int, float] = {}
    for values in folder.glob("counter_*.db"):
        alone = folder.parent / f"alone-{values.stem}"
        alone.mkdir(exist_ok=True)
        shutil.copy(values, alone / values.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(alone))  # type: ignore[no-untyped-call]
        pid = int(values.stem.removeprefix("counter_"))
        counted[pid] = sum(
            s.value for m in registry.collect() for s in m.samples if s.name == "persona_chat_requests_total"
        )
        shutil.rmtree(alone)
    return counted


def test_two_workers_add_their_metrics_up(
    redis_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_424242.db").write_bytes(b"left by a previous run")  # unreadable: must be cleared
    env = {**process_env(redis_url, fake_upstream), "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    with serving(env, tmp_path / "serve.log", workers=2) as proxy:
        client = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, http_client=fresh_connections())

        def chat(_: int) -> str | None:
            return (
                client.chat.completions.create(model="fake-model", messages=MESSAGES)
                .choices[0]
                .message.content
            )

        sent = 0
        with ThreadPoolExecutor(8) as pool:
            # Until both processes have answered some (the kernel decides which accepts a connection).
            while sent < 2000:
                answers = list(pool.map(chat, range(100)))
                assert answers == ["fake answer to: hello"] * 100
                sent += 100
                per_process = chats_per_process(folder)
                if len([n for n in per_process.values() if n > 0]) >= 2:
                    break
        scrapes = [fresh_connections().get(f"{proxy.url}/metrics").text for _ in range(6)]
    per_process = chats_per_process(folder)
    served = [n for n in per_process.values() if n > 0]
    assert len(served) == 2, (per_process, proxy.output()[-2000:])
    assert sum(served) == sent
    for text in scrapes:  # whichever process answered the scrape shows the sum of both
        assert sample_in(text, "persona_chat_requests_total", mode="inject", outcome="ok") == sent
        assert sample_in(text, "persona_serving_processes") == 2
        assert 'pid="' not in text
    assert "Metrics of the 2 processes" in proxy.output()


def test_serve_keeps_its_own_metrics_folder_for_the_run(
    redis_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    with serving(process_env(redis_url, fake_upstream), tmp_path / "serve.log", workers=2) as proxy:
        assert sample(proxy.url, "persona_serving_processes") == 2
        logged = re.search(r"Metrics of the 2 processes: (\S+)", proxy.output())
        assert logged is not None, proxy.output()
        folder = Path(logged.group(1))
        assert folder.is_dir()
    assert not folder.exists()  # removed with the server


def alternating(proxies: list[ServeProcess]) -> Callable[[int], str]:
    """Round robin over the proxies: the base URL of call number i."""
    return lambda i: proxies[i % len(proxies)].v1


def test_two_proxies_share_the_rate_limit_and_see_persona_updates_at_once(
    redis_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    limit = 30
    env = process_env(redis_url, fake_upstream, limits=f'{{"default": {{"requests_per_minute": {limit}}}}}')
    with (
        serving(env, tmp_path / "a.log") as a,
        serving(env, tmp_path / "b.log") as b,
    ):
        base_url = alternating([a, b])
        admitted = refused = 0
        for i in range(2 * limit):
            client = openai.OpenAI(base_url=base_url(i), api_key=APP_KEY_A, max_retries=0)
            try:
                client.chat.completions.create(model="fake-model", messages=MESSAGES, user=f"user-{i}")
                admitted += 1
            except openai.RateLimitError:
                refused += 1
        assert (admitted, refused) == (limit, limit)

    # A fresh pair of proxies (the minute's window above is spent): a persona written through one is
    # used by both on their next call, after each had cached the previous version.
    with (
        serving(process_env(redis_url, fake_upstream), tmp_path / "c.log") as c,
        serving(process_env(redis_url, fake_upstream), tmp_path / "d.log") as d,
    ):
        admin = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Persona-Tenant": "tenant-a"}

        def persona_seen(proxy: ServeProcess) -> tuple[str, str]:
            fake_upstream.reset()
            client = openai.OpenAI(base_url=proxy.v1, api_key=APP_KEY_A, max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="fake-model", messages=MESSAGES, user="alice"
            )
            system = fake_upstream.chat_requests[-1].messages[0]
            return raw.headers["x-persona-version"], str(system.get("content"))

        for version, text in ((1, "Prefers metric units."), (2, "Prefers imperial units.")):
            writer = (c, d)[version % 2]
            put = httpx.put(f"{writer.url}/admin/users/alice/persona", json={"text": text}, headers=admin)
            assert put.status_code == 200 and put.json()["version"] == version
            for proxy in (c, d, c, d):
                seen_version, system = persona_seen(proxy)
                assert seen_version == str(version)
                assert text in system


async def test_two_workers_run_each_job_once(
    redis_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = job_settings(redis_url, fake_upstream)
    fake_upstream.responder = InductionResponder().slowed(0.02)
    users = [f"user-{n}" for n in range(8)]
    env = process_env(
        redis_url,
        fake_upstream,
        induction_model="fake-judge",
        worker_poll_s="0.05",
        worker_max_jobs="1",
        jobs_retry_defer_s="0.2",
    )
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    async with store_services(settings) as services:
        queue = JobQueue(settings, services.redis)
        for user in users:
            await services.preferences.add_pairs("tenant-a", user, make_pairs(user, 5))
        job_ids = [(await queue.enqueue_refresh("tenant-a", user))[0] for user in users]
        with workers(env, logs):
            records = await asyncio.gather(*(queue.wait(job_id, timeout=90) for job_id in job_ids))
        for record in records:
            assert record is not None and record["state"] == "complete", [
                log.read_text()[-2000:] for log in logs
            ]
            assert record["attempts"] == 1
        for user, job_id in zip(users, job_ids, strict=True):
            versions = await services.personas.list_versions("tenant-a", user)
            assert [(v.version, v.provenance["job_id"]) for v in versions] == [(1, job_id)]
        # Each job started in one worker only, and both workers took some.
        ran = [{job_id for job_id in job_ids if job_id in log.read_text()} for log in logs]
        assert ran[0] | ran[1] == set(job_ids)
        assert not ran[0] & ran[1]
        assert ran[0] and ran[1], [log.read_text()[-2000:] for log in logs]
