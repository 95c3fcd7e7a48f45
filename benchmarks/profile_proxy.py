"""Where the proxy's CPU goes under load: py-spy flame graphs of `persona serve` while wrk drives it.

    .venv/bin/python benchmarks/profile_proxy.py [--seconds 15] [--path /chat/completions] [--stream]
        [--limits | --everything]

Writes `benchmarks/out/profiles/<name>.svg` (flame graph) and `<name>.txt` (collapsed stacks), and
prints the functions with the largest share of samples, inclusive, so a change can be aimed at what
the profile shows. Needs py-spy (the dev extra) and permission to attach to a child process.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import threading
from pathlib import Path

import _harness as h
import proxy_overhead as po
from litellm_proxy import OUT

PROFILES = OUT / "profiles"


def record(pid: int, seconds: float, out: Path, fmt: str) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).with_name("py-spy")
    args = [str(py_spy), "record", "--pid", str(pid), "--duration", str(round(seconds)), "--rate", "250"]
    return subprocess.Popen([*args, "--format", fmt, "--output", str(out), "--nonblocking"])


def top_functions(collapsed: Path, count: int = 30) -> list[tuple[str, float]]:
    """Functions by inclusive share of samples (a function counted once per stack it appears in)."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue  # a frame name py-spy misread, with a line break inside it
        n = int(samples)
        total += n
        for frame in set(stack.split(";")):
            inclusive[frame] += n
    return [(frame, 100.0 * n / total) for frame, n in inclusive.most_common(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--path", default="/chat/completions")
    parser.add_argument("--name", default="chat")
    parser.add_argument("--connections", type=int, default=16, help="wrk's connections (1: the c=1 path)")
    parser.add_argument("--stream", action="store_true", help="streamed answers")
    parser.add_argument("--limits", action="store_true", help="with every rate limit on")
    parser.add_argument(
        "--everything",
        action="store_true",
        help="as a production deployment runs: every rate limit, feedback records, a user with 10 contexts",
    )
    args = parser.parse_args()
    body = po.RESPONSES_BODY if args.path == "/responses" else po.BODY
    settings = {"limits": json.dumps(po.LIMITS_ON)} if args.limits or args.everything else {}
    if args.everything:
        settings["feedback_records"] = "true"
        body = {**body, "user": "bench-ctx"}
    if args.stream:
        body = {**body, "stream": True}
    PROFILES.mkdir(parents=True, exist_ok=True)
    with h.redis() as redis, h.fake_upstream() as upstream, h.proxy(redis.url, upstream, **settings) as proxy:
        for user in ("bench-user", "bench-ctx"):
            h.put_persona(proxy, user, po.PERSONA, [po.EXEMPLAR, po.EXEMPLAR])
        po.plant_contexts(redis.url, "bench-ctx")
        url = f"{proxy}/v1{args.path}"
        h.wrk(url, body, connections=16, seconds=2)  # warm-up
        pid = h.PIDS[proxy]
        collapsed, svg = PROFILES / f"{args.name}.txt", PROFILES / f"{args.name}.svg"
        load = threading.Thread(
            target=h.wrk,
            args=(url, body),
            kwargs={"connections": args.connections, "seconds": args.seconds * 2 + 2},
        )
        load.start()
        for out, fmt in ((collapsed, "raw"), (svg, "flamegraph")):
            record(pid, args.seconds, out, fmt).wait()
        load.join()
    print(f"wrote {svg} and {collapsed}; inclusive share of samples:")
    for frame, share in top_functions(collapsed):
        print(f"{share:6.1f}%  {frame}")


if __name__ == "__main__":
    main()
