"""ONNX Runtime backend for the frozen text encoder (CPU): same vectors as torch, less overhead per call.

The encoder plus mean pooling and L2 normalisation (the same ops as `TextEncoder`'s torch path) is
exported once with `torch.onnx.export` (TorchScript exporter, dynamic batch and sequence axes) into a
cache directory, under a name keyed by a hash of the model files, the torch version and the export
recipe; later starts load the cached file. Vectors agree with the torch path to cosine ≥ 0.9999 (see
tests/test_lora_onnx.py), so heads and adapters trained on either backend stay valid.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from middleware.rerank.lora.base import LoraUnavailable, torch_module

EXPORT_RECIPE = "pooled-l2/opset17/1"  # bump when the exported graph changes
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def onnx_available() -> bool:
    """Whether onnxruntime can be imported (without importing it)."""
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/persona-middleware/onnx` (`~/.cache/...` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "persona-middleware" / "onnx"


def model_key(path: Path) -> str:
    """A hash of the encoder's weight and config files, the torch version and the export recipe."""
    torch = torch_module()
    digest = hashlib.sha256(f"{EXPORT_RECIPE}|torch={torch.__version__}".encode())
    for name in MODEL_FILES:
        file = path / name
        if file.exists():
            digest.update(name.encode())
            with file.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:20]


def _pooled_module(model: Any) -> Any:
    torch = torch_module()

    class Pooled(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return Pooled(model).eval()


def export(model: Any, tokenizer: Any, out: Path) -> Path:
    """Export `model` (a transformers encoder, fp32, CPU) with pooling to `out`, atomically."""
    torch = torch_module()
    sample = tokenizer(
        ["a short text", "a somewhat longer text, so that the batch has some padding in it"],
        padding=True,
        return_tensors="pt",
    )
    args = tuple(sample[name] for name in INPUT_NAMES)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out.stem, suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notices
            torch.onnx.export(
                _pooled_module(model),
                args,
                str(tmp),
                dynamo=False,
                input_names=list(INPUT_NAMES),
                output_names=["embedding"],
                dynamic_axes={**axes, "embedding": {0: "batch"}},
                opset_version=17,
                do_constant_folding=True,
            )
        tmp.chmod(0o644)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


class OnnxEncoder:
    """Runs the exported encoder in an `onnxruntime.InferenceSession` (CPU provider)."""

    def __init__(self, file: Path, *, threads: int = 2) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise LoraUnavailable(
                "the onnx encoder backend needs onnxruntime: pip install onnxruntime"
            ) from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.file = file
        self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

    @classmethod
    def load_or_export(
        cls, model: Any, tokenizer: Any, path: Path, *, cache_dir: Path | None = None, threads: int = 2
    ) -> OnnxEncoder:
        """The cached export for the model files in `path`, exporting `model` first if there is none."""
        name = path.name if path.name != "model" else path.parent.name
        file = (cache_dir or default_cache_dir()) / f"{name}-{model_key(path)}.onnx"
        if not file.exists():
            export(model, tokenizer, file)
        return cls(file, threads=threads)

    def __call__(self, encoded: Any) -> np.ndarray:
        """(batch, dim) float32 unit vectors for a tokenizer output (numpy or torch tensors)."""
        ids = np.asarray(encoded["input_ids"], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.asarray(encoded["attention_mask"], dtype=np.int64)}
        types = encoded.get("token_type_ids")
        feed["token_type_ids"] = np.zeros_like(ids) if types is None else np.asarray(types, dtype=np.int64)
        out = self.session.run(None, feed)[0]
        return np.asarray(out, dtype=np.float32)
