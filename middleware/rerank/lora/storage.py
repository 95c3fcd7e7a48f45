"""Files and bytes of the `lora` reranker: the global head file and per-user adapter blobs
(safetensors; their metadata names the format, the head an adapter belongs to, and its facts)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any

from middleware.adapter_format import safetensors_metadata
from middleware.errors import ValidationFailed
from middleware.rerank.lora.base import ADAPTER_FORMAT, FEATURE_VERSION, HEAD_FORMAT, AdapterMismatch


def write_head(path: str | Path, state: dict[str, Any], meta: dict[str, str]) -> Path:
    """Write a head atomically (readers, such as a proxy reloading it, never see half a file)."""
    from safetensors.torch import save_file

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=meta)
    tmp.replace(out)
    return out


def read_head(path: str | Path, in_dim: int) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a head file; refuses another format, features or input size."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata() or {})
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    if meta.get("format") != HEAD_FORMAT or meta.get("features") != FEATURE_VERSION:
        raise ValidationFailed(f"{path} is not a {HEAD_FORMAT} head with features {FEATURE_VERSION}")
    if int(meta["in_dim"]) != in_dim:
        raise ValidationFailed(f"{path} expects input size {meta['in_dim']}, this encoder gives {in_dim}")
    return state, meta


def adapter_to_bytes(state: dict[str, Any], meta: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return bytes(save({k: v.contiguous().cpu() for k, v in state.items()}, metadata=meta))


def read_adapter(
    blob: bytes, *, user: Hashable, head_id: str | None, tensors: Iterable[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of an adapter blob; AdapterMismatch unless it is a persona adapter of
    head `head_id` with exactly the expected tensors."""
    from safetensors.torch import load

    try:
        state = load(blob)
        meta = safetensors_metadata(blob)
    except Exception as exc:
        raise AdapterMismatch(f"adapter for user {user!r} is not readable: {exc}") from exc
    if meta.get("format") != ADAPTER_FORMAT:
        raise AdapterMismatch(f"adapter for user {user!r} is not a {ADAPTER_FORMAT} adapter")
    if meta.get("head_id") != head_id:
        raise AdapterMismatch(
            f"adapter for user {user!r} was trained on head {meta.get('head_id')}, the loaded head is {head_id}"
        )
    if set(state) != set(tensors):
        raise AdapterMismatch(f"adapter for user {user!r} has unexpected tensors")
    return state, meta
