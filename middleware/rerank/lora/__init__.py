"""The built-in `lora` reranker: frozen text encoder + global reward head + per-user LoRA adapters.

* `encoder.py`  the frozen sentence encoder (all-MiniLM-L6-v2, packaged; no hub access) and texts
* `model.py`    `LoraRewardModel`: features, global head, adapters (bytes, bounded cache), scoring
* `training.py` global head training (Bradley–Terry) and per-user adapter training (CV'd strength)
* `storage.py`  the head file and adapter bytes (safetensors with metadata)
* `cache.py`    the bounded adapter cache, keyed so a stale adapter is never served
* `reranker.py` `LoraReranker` (the async hook), `create_lora_reranker`, `register`
* `cli_train.py` `persona train-reward-head`

Adapters are trained by the worker after each persona refresh (`middleware/induction/adapters.py`)
and stored beside the persona version; the global head by `persona train-reward-head`.

torch / transformers / peft are imported lazily: importing this package works without the `lora`
extra; using it raises `LoraUnavailable`.
"""

from middleware.rerank.lora.base import (
    ADAPTER_FORMAT,
    DEFAULT_STRENGTHS,
    FEATURE_VERSION,
    HEAD_FORMAT,
    AdapterMismatch,
    LoraNotTrained,
    LoraUnavailable,
    extra_available,
)
from middleware.rerank.lora.cache import AdapterCache
from middleware.rerank.lora.encoder import TextEncoder, context_text, default_encoder_path, length_features
from middleware.rerank.lora.model import LoraRewardModel
from middleware.rerank.lora.reranker import (
    LoraReranker,
    adapter_key,
    create_lora_reranker,
    model_from_settings,
    register,
)

__all__ = [
    "ADAPTER_FORMAT",
    "DEFAULT_STRENGTHS",
    "FEATURE_VERSION",
    "HEAD_FORMAT",
    "AdapterCache",
    "AdapterMismatch",
    "LoraNotTrained",
    "LoraReranker",
    "LoraRewardModel",
    "LoraUnavailable",
    "TextEncoder",
    "adapter_key",
    "context_text",
    "create_lora_reranker",
    "default_encoder_path",
    "extra_available",
    "length_features",
    "model_from_settings",
    "register",
]
