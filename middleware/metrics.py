"""Prometheus metrics, one registry per app instance (so tests and several apps never collide).

Several serving processes (`persona serve --workers N`) share one view through prometheus_client's
multiprocess mode: with `PROMETHEUS_MULTIPROC_DIR` set before the process starts, every value lives
in a file of that folder and `render` adds up the files of all processes (counters and histograms
summed; gauges by their `multiprocess_mode`).
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def multiproc_dir() -> str | None:
    """The multiprocess folder this process writes its values to, or None (one process)."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def clear_multiproc_dir(path: str) -> None:
    """Remove the values a previous run left (prometheus_client wants a clean folder at start)."""
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_processes(path: str) -> None:
    """Drop the live gauges of processes that are gone (a worker killed without its shutdown, then
    replaced by the server), so `livesum` counts only the processes serving now."""
    for name in os.listdir(path):
        found = _LIVE_GAUGE_FILE.match(name)
        if found is not None and not _alive(int(found.group(1))):
            mark_process_dead(int(found.group(1)), path)  # type: ignore[no-untyped-call]


class Children:
    """The children of a labelled metric, each looked up once: `.labels()` validates its values and
    takes a lock on every call, which the busiest routes would pay on every request."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.chat_requests = Counter(
            "persona_chat_requests",
            "Chat calls by mode and outcome",
            ["mode", "outcome"],
            registry=self.registry,
        )
        self.route_requests = Counter(
            "persona_route_requests",
            "Calls on the other API routes (Responses, Messages, passed through) by route, mode, outcome",
            ["route", "mode", "outcome"],
            registry=self.registry,
        )
        # The chat-like routes' counts by (mode, outcome) and (route, mode, outcome): few, fixed values.
        self.chat_calls = Children(self.chat_requests)
        self.route_calls = Children(self.route_requests)
        self.persona_injected = Counter(
            "persona_injected", "Chat calls that carried a persona", registry=self.registry
        )
        self.persona_context_routed = Counter(
            "persona_context_routed",
            "Persona lookups by the context router's decision (tag, similar, general)",
            ["decision"],
            registry=self.registry,
        )
        self.context_routes = Children(self.persona_context_routed)  # by decision: three values
        self.persona_read_failures = Counter(
            "persona_read_failures",
            "Persona reads that failed or timed out (the chat went on without a persona)",
            registry=self.registry,
        )
        self.upstream_retries = Counter(
            "persona_upstream_retries", "Upstream attempts retried", registry=self.registry
        )
        self.client_disconnects = Counter(
            "persona_client_disconnects", "Calls whose client went away first", registry=self.registry
        )
        self.store_write_failures = Counter(
            "persona_store_write_failures",
            "Writes refused because Redis was unavailable",
            registry=self.registry,
        )
        self.rerank_fallbacks = Counter(
            "persona_rerank_fallbacks",
            "Rerank calls that fell back to the first candidate",
            registry=self.registry,
        )
        self.policy_arms = Counter(
            "persona_policy_arm",
            'Arms the auto mode chose, by arm (README "Auto mode")',
            ["arm"],
            registry=self.registry,
        )
        self.quota_refusals = Counter(
            "persona_quota_refusals",
            "Calls refused by a quota (429) or a cap (400), by tenant and the limit that refused",
            ["tenant", "reason"],
            registry=self.registry,
        )
        self.quota_store_failures = Counter(
            "persona_quota_store_failures",
            "Quota checks skipped because Redis failed (the call went on: quotas fail open)",
            registry=self.registry,
        )
        self.overhead_seconds = Histogram(
            "persona_overhead_seconds",
            "Time the proxy adds before forwarding",
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1),
            registry=self.registry,
        )

        self.rerank_seconds = Histogram(
            "persona_rerank_seconds",
            "Time a reranker took to score the candidates (after they were generated)",
            ["reranker"],
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry,
        )
        # One per serving process: its sum over the live processes is how many serve now.
        self.serving_processes = Gauge(
            "persona_serving_processes",
            "Proxy processes serving (summed over the live processes of a multiprocess server)",
            multiprocess_mode="livesum",
            registry=self.registry,
        )

    def started(self) -> None:
        """This process serves from now on."""
        self.serving_processes.set(1)

    def stopped(self) -> None:
        """This process stops serving (its live gauges leave the multiprocess view)."""
        self.serving_processes.set(0)
        path = multiproc_dir()
        if path is not None:
            mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]

    def render(self) -> bytes:
        path = multiproc_dir()
        if path is None:
            return generate_latest(self.registry)
        forget_dead_processes(path)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
