"""Read the proxy's Prometheus metrics (parsed with prometheus_client's own text parser)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def sample_in(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus exposition (`name` as exposed, e.g.
    `persona_chat_requests_total`); 0.0 if absent."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


def sample(base_url: str, name: str, **labels: str) -> float:
    """The value of one sample of the proxy's /metrics now; 0.0 if absent."""
    return sample_in(httpx.get(f"{base_url}/metrics", timeout=10).text, name, **labels)
