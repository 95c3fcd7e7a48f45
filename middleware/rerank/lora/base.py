"""What every part of the `lora` reranker shares: format names, errors, lazy imports of the extra."""

from __future__ import annotations

from typing import Any

from middleware.errors import PersonaError, ValidationFailed

ADAPTER_FORMAT = "persona-lora/1"
HEAD_FORMAT = "persona-lora-head/1"
FEATURE_VERSION = "emb+ctxprod+len20/2"
# Length is two of 770 features. Scaled up, weight decay lets the head use it (held-out accuracy of the
# global head on tldr_feedback's inner validation split: 0.613 -> 0.664; ukp_convarg_dev unchanged).
LENGTH_FEATURE_WEIGHT = 20.0
DEFAULT_ENCODER_NAME = "all-MiniLM-L6-v2"
# Penalty weights tried per user (larger = closer to the global head); "off" is always a candidate.
DEFAULT_STRENGTHS: tuple[float, ...] = (3.0, 0.3, 0.03)
INSTALL_HINT = "the lora reranker needs the optional extra: pip install 'persona-middleware[lora]'"


class LoraUnavailable(PersonaError):
    """The `lora` extra (torch, transformers, peft) is not installed, or the encoder is missing."""

    code = "lora_unavailable"


class LoraNotTrained(PersonaError):
    """No global reward head was trained or loaded."""

    code = "lora_not_trained"
    status_code = 503
    error_type = "service_unavailable"


class AdapterMismatch(ValidationFailed):
    """The adapter bytes were trained on another global head (or are not a persona adapter)."""

    code = "adapter_mismatch"


def torch_module() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise LoraUnavailable(INSTALL_HINT) from exc
    return torch


def peft_module() -> Any:
    try:
        import peft
    except ImportError as exc:  # pragma: no cover
        raise LoraUnavailable(INSTALL_HINT) from exc
    return peft


def extra_available() -> bool:
    """Whether torch, transformers and peft can be imported (without importing them)."""
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("torch", "transformers", "peft", "safetensors"))
