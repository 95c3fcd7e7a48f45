"""The self-description of a stored reranker adapter blob (safetensors: an 8-byte little-endian
header length, then a JSON header whose `__metadata__` names the adapter's head and training facts).

The store keeps adapter bytes as they are; reading what they say is this module's job.
"""

from __future__ import annotations

from typing import Any

import orjson

ADAPTER_FACTS = (
    "head_id",
    "strength",
    "n_pairs",
    "n_implicit",
    "trained_at",
    "train_seconds",
    "persona_version_id",
)


def safetensors_metadata(blob: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob."""
    header_len = int.from_bytes(blob[:8], "little")
    return dict(orjson.loads(blob[8 : 8 + header_len]).get("__metadata__") or {})


def adapter_facts(blob: bytes) -> dict[str, Any]:
    """Size and self-description of an adapter blob (unreadable metadata: size alone)."""
    try:
        meta = safetensors_metadata(blob)
    except (orjson.JSONDecodeError, AttributeError, ValueError):
        meta = {}
    return {"bytes": len(blob), **{k: meta.get(k) for k in ADAPTER_FACTS}}
