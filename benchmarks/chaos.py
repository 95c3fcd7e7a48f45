"""Chaos: mixed load through a real proxy and a real worker while Redis is killed, restarted and paused.

Loopback only and bounded in time: a private redis-server (append-only file, fsync every second), the
suite's fake upstream (in this process; it answers chat and the induction prompts), `persona serve`
and `persona worker` as separate processes. For `--seconds` (default 24) the load runs: chat calls on
several connections, Responses API calls (`/v1/responses`, one connection plain and one streamed),
preference writes (each with its own Idempotency-Key, retried with the same key after a 503, as a
careful client does), comparisons (each with its own Idempotency-Key, retried the same way) with their
judgements, and a persona refresh job in each phase. Redis is killed (SIGKILL) at 1/8 of the run and started again on the same port
3 s later, then paused (SIGSTOP) at 1/2 of the run for 5 s.

Printed afterwards: the chat and Responses success rates (a stream succeeds when it ends with
`response.completed`), the acknowledged writes and how many of them are found in
Redis (a write acknowledged in the last second before the kill may be lost with the AOF's everysec
fsync: that window is reported apart), the longest time any request took, and the refresh jobs'
outcomes. Targets: chat 100 %, 0 acknowledged writes lost beyond the AOF window, no request longer
than 2 s.

    .venv/bin/python benchmarks/chaos.py [--seconds 24] [--chat-connections 4]

To add a kind of traffic, write a loop like `chat_loop` and name it in `LOADS`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import httpx
import redis as redis_client

from middleware.store import keys
from tests.induction_fakes import InductionResponder, make_pairs
from tests.support.fake_upstream import FakeUpstream

TENANT = "bench"
CHAT_USER, WRITER, JUDGE, REFRESHED = "chaos-chat", "chaos-writer", "chaos-judge", "chaos-refresh"
AOF_WINDOW_S = 1.5  # everysec fsync, plus the time the kill signal takes
TIMEOUT_S = 10.0
APP = {"Authorization": f"Bearer {h.APP_KEY}"}
ADMIN = {"Authorization": f"Bearer {h.ADMIN_KEY}", "X-Persona-Tenant": TENANT}
MESSAGES = [
    {"role": "system", "content": "You are the ACME store assistant."},
    {"role": "user", "content": "Which running shoes for a beginner?"},
]


@dataclass
class Figures:
    calls: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # kind -> (status, seconds)
    acknowledged: dict[str, float] = field(default_factory=dict)  # record id -> when acknowledged
    jobs: list[dict[str, Any]] = field(default_factory=list)
    killed_at: float | None = None

    def record(self, kind: str, status: int, seconds: float) -> None:
        self.calls.setdefault(kind, []).append((status, seconds))


async def timed(figures: Figures, kind: str, call: Awaitable[httpx.Response]) -> httpx.Response | None:
    started = time.monotonic()
    try:
        response = await call
    except httpx.HTTPError:
        figures.record(kind, 0, time.monotonic() - started)
        return None
    figures.record(kind, response.status_code, time.monotonic() - started)
    return response


Loop = Callable[[httpx.AsyncClient, Figures, float], Awaitable[None]]


async def chat_loop(client: httpx.AsyncClient, figures: Figures, until: float) -> None:
    body = {"model": "fake-model", "messages": MESSAGES, "user": CHAT_USER}
    while time.monotonic() < until:
        await timed(figures, "chat", client.post("/v1/chat/completions", json=body, headers=APP))


RESPONSES_BODY = {
    "model": "fake-model",
    "instructions": "You are the ACME store assistant.",
    "input": "Which running shoes for a beginner?",
    "user": CHAT_USER,
}


async def responses_loop(client: httpx.AsyncClient, figures: Figures, until: float) -> None:
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            response = await client.post("/v1/responses", json=RESPONSES_BODY, headers=APP)
            ok = response.status_code == 200 and response.json().get("status") == "completed"
            status = 200 if ok else (response.status_code if response.status_code != 200 else 0)
        except (httpx.HTTPError, ValueError):
            status = 0
        figures.record("responses", status, time.monotonic() - started)


async def responses_stream_loop(client: httpx.AsyncClient, figures: Figures, until: float) -> None:
    """A stream counts as a success only when it arrives whole: status 200 and `response.completed`."""
    body = {**RESPONSES_BODY, "stream": True}
    while time.monotonic() < until:
        started = time.monotonic()
        status = 0
        try:
            async with client.stream("POST", "/v1/responses", json=body, headers=APP) as response:
                text = (await response.aread()).decode()
                status = response.status_code
                if status == 200 and "event: response.completed" not in text:
                    status = 0  # cut short or ended with an error event
        except httpx.HTTPError:
            status = 0
        figures.record("responses-stream", status, time.monotonic() - started)


async def preferences_loop(client: httpx.AsyncClient, figures: Figures, until: float) -> None:
    i = 0
    while time.monotonic() < until:
        i += 1
        body = {
            "user": WRITER,
            "context": [{"role": "user", "content": f"question {i}"}],
            "chosen": {"role": "assistant", "content": f"good {i}"},
            "rejected": {"role": "assistant", "content": f"bad {i}"},
        }
        headers = {**APP, "Idempotency-Key": f"chaos-{i}"}
        while time.monotonic() < until + 10:  # a 503 is retried with the same key
            response = await timed(
                figures, "preference", client.post("/v1/preferences", json=body, headers=headers)
            )
            if response is not None and response.status_code in (200, 201):
                figures.acknowledged.setdefault(response.json()["data"][0]["id"], time.monotonic())
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.02)


async def comparisons_loop(client: httpx.AsyncClient, figures: Figures, until: float) -> None:
    body = {"model": "fake-model", "messages": MESSAGES, "user": JUDGE}
    i = 0
    while time.monotonic() < until:
        i += 1
        headers = {**APP, "Idempotency-Key": f"chaos-cmp-{i}"}
        created = None
        while time.monotonic() < until + 10:  # a 503 is retried with the same key
            posted = client.post("/v1/comparisons", json=body, headers=headers)
            created = await timed(figures, "comparison", posted)
            if created is not None and created.status_code == 200:
                break
            await asyncio.sleep(0.1)
        if created is None or created.status_code != 200:
            continue
        path = f"/v1/comparisons/{created.json()['id']}/judgement"
        judgement = {"best": 0, "worst": 1, "rationale": "the first is clearer", "user": JUDGE}
        judged = await timed(figures, "judgement", client.post(path, json=judgement, headers=APP))
        if judged is not None and judged.status_code == 201:
            for record in judged.json()["records"]:
                figures.acknowledged.setdefault(record["id"], time.monotonic())


LOADS: dict[str, Loop] = {
    "chat": chat_loop,
    "responses": responses_loop,
    "responses-stream": responses_stream_loop,
    "preferences": preferences_loop,
    "comparisons": comparisons_loop,
}


async def refresh(client: httpx.AsyncClient, figures: Figures, phase: str) -> None:
    """Queue a refresh of the user's persona and follow it to its end (at most 60 s)."""
    started = time.monotonic()
    job_id = None
    while job_id is None and time.monotonic() - started < 30:
        response = await timed(
            figures, "refresh", client.post(f"/admin/users/{REFRESHED}/persona/refresh", headers=ADMIN)
        )
        if response is not None and response.status_code == 202:
            job_id = response.json()["job_id"]
        else:
            await asyncio.sleep(0.2)
    state = "not queued"
    while job_id is not None and time.monotonic() - started < 60:
        response = await timed(figures, "job", client.get(f"/admin/jobs/{job_id}", headers=ADMIN))
        if response is not None and response.status_code == 200:
            state = response.json()["state"]
            if state not in ("queued", "running"):
                break
        await asyncio.sleep(0.2)
    figures.jobs.append({"phase": phase, "state": state, "seconds": round(time.monotonic() - started, 1)})


async def faults(redis: Any, figures: Figures, start: float, seconds: float) -> None:
    await asyncio.sleep(max(0.0, start + seconds / 8 - time.monotonic()))
    figures.killed_at = time.monotonic()
    redis.kill()
    print(f"  {figures.killed_at - start:5.1f} s  redis-server killed (SIGKILL)", flush=True)
    await asyncio.sleep(3)
    await asyncio.to_thread(redis.restart)
    print(f"  {time.monotonic() - start:5.1f} s  redis-server restarted on port {redis.port}", flush=True)
    await asyncio.sleep(max(0.0, start + seconds / 2 - time.monotonic()))
    redis.pause()
    print(f"  {time.monotonic() - start:5.1f} s  redis-server paused (SIGSTOP) for 5 s", flush=True)
    await asyncio.sleep(5)
    redis.resume()
    print(f"  {time.monotonic() - start:5.1f} s  redis-server resumed", flush=True)


async def run(proxy_url: str, redis: Any, seconds: float, chat_connections: int) -> Figures:
    figures = Figures()
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=proxy_url, timeout=TIMEOUT_S, limits=limits) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
        served = "/v1/responses" in paths
        loads = {name: loop for name, loop in LOADS.items() if "responses" not in name or served}
        start = time.monotonic()
        until = start + seconds
        tasks = [asyncio.create_task(faults(redis, figures, start, seconds))]
        tasks += [asyncio.create_task(loads["chat"](client, figures, until)) for _ in range(chat_connections)]
        tasks += [
            asyncio.create_task(loop(client, figures, until))
            for name, loop in loads.items()
            if name != "chat"
        ]
        for phase, at in (
            ("before the kill", 0.0),
            ("after the restart", seconds / 8 + 4),
            ("after the pause", seconds / 2 + 6),
        ):
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            tasks.append(asyncio.create_task(refresh(client, figures, phase)))
        await asyncio.gather(*tasks)
    return figures


def stored_ids(redis_url: str, users: list[str]) -> set[str]:
    """The ids of the records in the users' preference streams, read straight from Redis."""
    client = redis_client.Redis.from_url(redis_url)
    try:
        return {f[b"id"].decode() for u in users for _, f in client.xrange(keys.prefs(TENANT, u))}
    finally:
        client.close()


def report(figures: Figures, redis_url: str) -> int:
    print("\nrequests by kind (status: count), longest:")
    for kind, calls in sorted(figures.calls.items()):
        statuses: dict[int, int] = {}
        for status, _ in calls:
            statuses[status] = statuses.get(status, 0) + 1
        longest = max(s for _, s in calls)
        print(f"  {kind:<11} {len(calls):6d}  {dict(sorted(statuses.items()))}  longest {longest:.2f} s")
    chat = figures.calls.get("chat", [])
    chat_ok = sum(1 for status, _ in chat if status == 200)
    answered = {kind: figures.calls.get(kind, []) for kind in ("responses", "responses-stream")}
    answered_ok = {kind: sum(1 for status, _ in calls if status == 200) for kind, calls in answered.items()}
    found = stored_ids(redis_url, [WRITER, JUDGE])
    lost = [rid for rid in figures.acknowledged if rid not in found]
    killed = figures.killed_at or 0.0
    in_window = [rid for rid in lost if killed - AOF_WINDOW_S <= figures.acknowledged[rid] <= killed]
    longest = max((s for calls in figures.calls.values() for _, s in calls), default=0.0)
    print(f"\nchat success: {chat_ok}/{len(chat)} = {100 * chat_ok / max(1, len(chat)):.2f} %")
    for kind, calls in answered.items():
        if calls:
            ok = answered_ok[kind]
            print(f"{kind} success: {ok}/{len(calls)} = {100 * ok / len(calls):.2f} %")
    print(
        f"writes acknowledged: {len(figures.acknowledged)}, found afterwards: {len(figures.acknowledged) - len(lost)}, "
        f"lost: {len(lost)} ({len(in_window)} acknowledged in the {AOF_WINDOW_S} s before the kill, "
        f"{len(lost) - len(in_window)} outside that window)"
    )
    print(f"longest request: {longest:.2f} s")
    print(
        "refresh jobs: " + "; ".join(f"{j['phase']}: {j['state']} in {j['seconds']} s" for j in figures.jobs)
    )
    every_answer = chat_ok == len(chat) and all(answered_ok[k] == len(c) for k, c in answered.items())
    met = every_answer and len(lost) == len(in_window) and longest <= 2.0
    print(
        "targets (chat and responses 100 %, no loss beyond the AOF window, nothing over 2 s): "
        + ("met" if met else "NOT met")
    )
    return 0 if met else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=24.0, help="length of the load (at least 16)")
    parser.add_argument("--chat-connections", type=int, default=4)
    args = parser.parse_args()
    seconds = max(16.0, args.seconds)

    env = {
        "PERSONA_INDUCTION_MODEL": "fake-judge",
        "PERSONA_JOBS_RETRY_DEFER_S": "0.5",
        "PERSONA_JOBS_TIMEOUT_S": "20",
        "PERSONA_JOBS_IN_PROGRESS_GRACE_S": "1",
        "PERSONA_WORKER_POLL_S": "0.1",
    }
    with FakeUpstream() as upstream, h.RedisServer(appendonly=True) as redis:
        upstream.responder = InductionResponder()
        with h.proxy(
            redis.url, upstream.base_url, **{k.removeprefix("PERSONA_").lower(): v for k, v in env.items()}
        ) as url:
            worker_env = {
                **env,
                "PERSONA_REDIS_URL": redis.url,
                "PERSONA_UPSTREAM_API_BASE": upstream.base_url,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            }
            with h.process([sys.executable, "-m", "middleware", "worker"], worker_env) as worker:
                h.put_persona(url, CHAT_USER, "Prefers short, concrete answers.")
                seed = httpx.post(
                    f"{url}/v1/preferences",
                    headers=APP,
                    json=[
                        {"user": REFRESHED, **p.model_dump(include={"context", "chosen", "rejected"})}
                        for p in make_pairs(REFRESHED, 6)
                    ],
                    timeout=TIMEOUT_S,
                )
                seed.raise_for_status()
                print(
                    f"chaos run: {seconds:.0f} s of load, {args.chat_connections} chat connections",
                    flush=True,
                )
                figures = asyncio.run(run(url, redis, seconds, args.chat_connections))
                alive = worker.poll() is None
        print(f"worker process alive at the end: {alive}")
        status = report(figures, redis.url)
        return status if alive else 1


if __name__ == "__main__":
    sys.exit(main())
