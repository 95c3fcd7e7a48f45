"""Prometheus metrics, one registry per app instance (so tests and several apps never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


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
        self.persona_injected = Counter(
            "persona_injected", "Chat calls that carried a persona", registry=self.registry
        )
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
            "Arms the auto mode chose, by arm (README \"Auto mode\")",
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
