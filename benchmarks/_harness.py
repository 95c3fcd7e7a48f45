"""Processes for benchmarks: a private redis-server, the fake upstream and the proxy, on loopback."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.lifecycle import stop_process  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

APP_KEY = "sk-bench-app"
# proxy URL -> its process id (for CPU time per request)
PIDS: dict[str, int] = {}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


ADMIN_KEY = "sk-bench-admin"


def wait_http(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(
    args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryFile() as log:
        env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            yield proc
        finally:
            stop_process(proc)
            if proc.returncode not in (0, -15, None):
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace")[-3000:])


@contextmanager
def fake_upstream(delay_ms: float = 0.0) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "tests.support.fake_upstream", "--port", str(port)]
    if delay_ms:
        args += ["--delay-ms", str(delay_ms)]
    with process(args):
        wait_http(f"http://127.0.0.1:{port}/v1/models")
        yield f"http://127.0.0.1:{port}/v1"


def redis() -> RedisServer:
    """A private redis-server for a `with` block (started on entry, stopped on exit)."""
    return RedisServer()


def proxy_environ(redis_url: str, upstream_base: str, **settings: str) -> dict[str, str]:
    """The variables a benchmark's proxy runs with: this Redis and upstream, the bench app and admin
    keys, and these PERSONA_ settings."""
    return {
        "PERSONA_REDIS_URL": redis_url,
        "PERSONA_UPSTREAM_API_BASE": upstream_base,
        "PERSONA_API_KEYS": json.dumps({APP_KEY: "bench"}),
        "PERSONA_ADMIN_KEY": ADMIN_KEY,
        "PERSONA_EMBEDDED_REDIS": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        **{f"PERSONA_{k.upper()}": v for k, v in settings.items()},
    }


@contextmanager
def proxy(
    redis_url: str,
    upstream_base: str,
    root: Path = ROOT,
    environ: dict[str, str] | None = None,
    workers: int = 1,
    **settings: str,
) -> Iterator[str]:
    """`persona serve` from the checkout at `root` (another checkout: a baseline in the same run), with
    these PERSONA_ settings plus any other variables in `environ` (OTEL_*), in `workers` processes."""
    port = free_port()
    env = {**(environ or {}), **proxy_environ(redis_url, upstream_base, **settings)}
    args = [sys.executable, "-m", "middleware", "serve", "--port", str(port), "--log-level", "warning"]
    if workers > 1:
        args += ["--workers", str(workers)]
    if root != ROOT:  # that checkout's package, not the one installed in the environment
        env["PYTHONPATH"] = str(root)
    with process(args, env, cwd=root) as proc:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        PIDS[f"http://127.0.0.1:{port}"] = proc.pid
        yield f"http://127.0.0.1:{port}"


@contextmanager
def floor_proxy(redis_port: int, upstream_base: str, personas: dict[str, str]) -> Iterator[str]:
    """`floor_proxy.py` (the least a Python proxy with a persona does) in front of `upstream_base`,
    with `personas` (user -> text) stored where it reads them."""
    import redis as redis_py

    with redis_py.Redis(port=redis_port) as client:
        for user, text in personas.items():
            client.set(f"persona:{user}", text)
    port = free_port()
    script = str(Path(__file__).resolve().parent / "floor_proxy.py")
    args = [sys.executable, script, "--port", str(port), "--upstream", upstream_base]
    with process([*args, "--redis-port", str(redis_port)], {"PYTHONPATH": str(ROOT)}) as proc:
        wait_http(f"http://127.0.0.1:{port}/")
        PIDS[f"http://127.0.0.1:{port}"] = proc.pid
        yield f"http://127.0.0.1:{port}"


def put_persona(
    proxy_url: str, user: str, text: str, exemplars: list[dict[str, object]] | None = None
) -> None:
    r = httpx.put(
        f"{proxy_url}/admin/users/{user}/persona",
        json={"text": text, "exemplars": exemplars or []},
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "X-Persona-Tenant": "bench"},
    )
    r.raise_for_status()


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def wrk(
    url: str, body: dict[str, object], *, connections: int, seconds: float, pause_ms: float | None = None
) -> dict[str, float]:
    """Run wrk against a chat URL; returns req/s and latency percentiles in ms.

    With `pause_ms`, each connection waits that long after every answer (wrk's `delay()` hook), which
    paces the load below saturation; latency is still measured per request, without the pause.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (json.dumps(body), APP_KEY))
        if pause_ms is not None:
            # uniform jitter around the mean keeps the connections from marching in lockstep bursts
            mean = max(0, round(pause_ms))
            script.write(f"function delay() return math.random(0, {2 * mean}) end\n")
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    percentiles = {}
    for label in ("50", "99"):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)  # type: ignore[union-attr]
        percentiles[label] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return {
        "rps": rps,
        "p50_ms": percentiles["50"],
        "p99_ms": percentiles["99"],
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def proxy_pid(url: str) -> int:
    """The process id of the proxy (started by `proxy`, or registered in PIDS) that serves `url`."""
    return next(pid for base, pid in PIDS.items() if url == base or url.startswith(f"{base}/"))


def wrk_cpu(url: str, body: dict[str, object], *, connections: int, seconds: float) -> dict[str, float]:
    """`wrk`, plus `cpu_ms`: the CPU time the proxy serving `url` spent per request during the run
    (steadier than req/s on a shared machine)."""
    pid = proxy_pid(url)
    before = cpu_seconds(pid)
    result = wrk(url, body, connections=connections, seconds=seconds)
    served = result["rps"] * max(1, round(seconds))  # wrk runs whole seconds
    return {**result, "cpu_ms": (cpu_seconds(pid) - before) * 1000.0 / max(served, 1.0)}


def reported_overhead(url: str, count: int, body: dict[str, object]) -> list[float]:
    """x-persona-overhead-ms of `count` sequential calls."""
    with httpx.Client(headers={"Authorization": f"Bearer {APP_KEY}"}, timeout=10) as client:
        return [float(client.post(url, json=body).headers["x-persona-overhead-ms"]) for _ in range(count)]


def c1_rounds(
    cases: dict[str, tuple[str, dict[str, object]]], runs: int, seconds: float, overhead_calls: int
) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[float]]]:
    """Each case (name -> chat URL and body) warmed up, then `runs` rounds in which every case in turn
    runs wrk at c=1 for `seconds` and makes `overhead_calls` calls for the proxy's own measure
    (x-persona-overhead-ms). Returns the wrk results and the overheads, by case."""
    for url, body in cases.values():
        wrk(url, body, connections=1, seconds=2)  # warm-up
    results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    overhead: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, (url, body) in cases.items():
            results[name].append(wrk(url, body, connections=1, seconds=seconds))
            overhead[name] += reported_overhead(url, overhead_calls, body)
    return results, overhead


def spread(values: list[float], digits: int = 3) -> str:
    """min-max of `values` ("-" for fewer than two)."""
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}" if len(values) > 1 else "-"


def asgi_post(
    app: Any, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> Callable[[], Awaitable[int]]:
    """One POST of `body` to `path` of the ASGI `app` in this process, as the server would hand it
    over (the body in one message, the client staying): a call that returns the status answered."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8080),
    }
    request = {"type": "http.request", "body": body, "more_body": False}

    async def call() -> int:
        status = 0
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return request
            await asyncio.Event().wait()  # the client stays; never reached in these calls
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(scope), receive, send)  # the app may add to its scope
        return status

    return call


async def asgi_cpu_ms(
    app: Any, path: str, headers: list[tuple[bytes, bytes]], body: bytes, count: int
) -> tuple[float, set[int]]:
    """POST `body` to `path` of the ASGI `app` in this process `count` times (`asgi_post`): CPU
    milliseconds per call, and the statuses answered."""
    call = asgi_post(app, path, headers, body)
    statuses: set[int] = set()
    started = time.process_time()
    for _ in range(count):
        statuses.add(await call())
    elapsed = time.process_time() - started
    return elapsed * 1000.0 / count, statuses


def in_process_args(doc: str | None, *, calls: int, runs: int = 7) -> argparse.Namespace:
    """`--runs` and `--calls` of a benchmark timed in one process (its docstring as the help)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--calls", type=int, default=calls)
    return parser.parse_args()
