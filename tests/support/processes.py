"""Real `persona serve` and `persona worker` processes for tests that need more than one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.fake_upstream import FakeUpstream
from tests.support.lifecycle import stop_process
from tests.support.ports import free_port
from tests.support.proxy import ADMIN_KEY, APP_KEY_A, APP_KEY_B

ROOT = Path(__file__).resolve().parents[2]


def process_env(redis_url: str, upstream: FakeUpstream, **settings: str) -> dict[str, str]:
    """The environment of a proxy or worker process: this test's Redis and fake upstream, the test
    keys, and `settings` (PERSONA_<NAME>=value, names given in lower case)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PERSONA_", "OTEL_", "PROMETHEUS_MULTIPROC"))
    }
    env.update(
        {
            "PERSONA_REDIS_URL": redis_url,
            "PERSONA_EMBEDDED_REDIS": "false",
            "PERSONA_UPSTREAM_API_BASE": upstream.base_url,
            "PERSONA_UPSTREAM_API_KEY": "sk-upstream-secret",
            "PERSONA_API_KEYS": f'{{"{APP_KEY_A}": "tenant-a", "{APP_KEY_B}": "tenant-b"}}',
            "PERSONA_ADMIN_KEY": ADMIN_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
    )
    env.update({f"PERSONA_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serving(env: Mapping[str, str], log: Path, *, workers: int = 1) -> Iterator[ServeProcess]:
    """`persona serve --workers N` on a free port, up once every worker answers /readyz; stopped
    (SIGINT, as a terminal would) on the way out."""
    port = free_port()
    command = [sys.executable, "-m", "middleware", "serve", "--port", str(port), "--workers", str(workers)]
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, env=dict(env), stdout=sink, stderr=subprocess.STDOUT, text=True
        )
    running = ServeProcess(process, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, running.output()[-3000:]
            assert time.monotonic() < deadline, running.output()[-3000:]
            try:
                if httpx.get(f"{running.url}/readyz", timeout=1).status_code == 200 and (
                    running.output().count("Application startup complete") >= workers
                ):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield running
    finally:
        stop_process(process, signal.SIGINT, timeout=30)


def quick_worker_env(redis_url: str, upstream: FakeUpstream) -> dict[str, str]:
    """A worker's environment with fast job settings, one induction call at a time, and a job whose
    worker died taken up again within seconds (its in-progress marker expires after 4 + 0.5 s)."""
    return process_env(
        redis_url,
        upstream,
        induction_model="fake-judge",
        induction_concurrency="1",
        jobs_timeout_s="4",
        jobs_in_progress_grace_s="0.5",
        worker_poll_s="0.05",
        jobs_retry_defer_s="0.2",
    )


def start_worker(env: Mapping[str, str], log: Path) -> subprocess.Popen[str]:
    """A `persona worker` process; its output is added to `log` (a restarted worker's too)."""
    with log.open("a") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "middleware", "worker"],
            cwd=ROOT,
            env=dict(env),
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )


@contextmanager
def workers(env: Mapping[str, str], logs: list[Path]) -> Iterator[list[subprocess.Popen[str]]]:
    """One `persona worker` process per log file; stopped (SIGTERM) on the way out."""
    started: list[subprocess.Popen[str]] = []
    try:
        for log in logs:
            started.append(start_worker(env, log))
        yield started
    finally:
        for process in started:
            stop_process(process)
