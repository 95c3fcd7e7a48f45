"""`LoraRewardModel`: a global Bradley–Terry reward head on frozen embeddings, plus per-user LoRA
adapters (peft) on that head, serialised to bytes and held in a bounded cache.

* Features of a candidate c in context x: [e(c), 4 e(c) * e(x), 20 x length features].
* Global head (an MLP plus a linear skip) trained on all users' pairs with the Bradley–Terry loss:
  P(chosen > rejected) = sigmoid(r(chosen) - r(rejected)). See `training.py`.
* Per-user adapter: a LoRA adapter on the head's layers trained on that user's pairs, anchored to the
  global head's scores with a strength chosen per user by cross-validation. Adapter bytes are
  safetensors whose metadata names the global head (`head_id`), so an adapter of another head is
  refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from middleware.errors import NotEnoughData
from middleware.models import Message, PreferencePair, message_text
from middleware.rerank.lora import storage, training
from middleware.rerank.lora.base import (
    ADAPTER_FORMAT,
    DEFAULT_STRENGTHS,
    FEATURE_VERSION,
    HEAD_FORMAT,
    LENGTH_FEATURE_WEIGHT,
    LoraNotTrained,
    peft_module,
    torch_module,
)
from middleware.rerank.lora.cache import AdapterCache, CachedAdapter
from middleware.rerank.lora.encoder import TextEncoder, context_text, length_features

log = logging.getLogger("middleware.rerank.lora")


def make_head(in_dim: int, hidden: int) -> Any:
    torch = torch_module()
    nn = torch.nn

    class RewardHead(nn.Module):  # type: ignore[misc, name-defined]
        """r(phi) = fc2(gelu(fc1(phi))) + lin(phi); scores are only compared within one context."""

        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(in_dim, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, 1)
            self.lin = nn.Linear(in_dim, 1)

        def forward(self, x: Any) -> Any:
            return (self.fc2(self.act(self.fc1(x))) + self.lin(x)).squeeze(-1)

    return RewardHead()


class LoraRewardModel:
    """Global Bradley–Terry reward head on frozen embeddings, plus per-user LoRA adapters (peft).

    Adapters are cached under any hashable key (a user id string, or the proxy's
    (tenant, user, persona version, version id) tuple); scoring with a key not in the cache uses the
    global head alone.
    """

    def __init__(
        self,
        encoder: TextEncoder | None = None,
        *,
        encoder_path: str | Path | None = None,
        cache_size: int = 256,
        hidden: int = 64,
        rank: int = 4,
        strengths: Sequence[float] = DEFAULT_STRENGTHS,
        global_epochs: int = 10,
        global_weight_decay: float = 1e-2,
        user_steps: int = 40,
        cv_folds: int = 3,
        seed: int = 0,
        device: str | None = None,
        num_threads: int | None = None,
        cache_dir: str | Path | None = None,
        context_max_length: int | None = None,
        quantize: bool | str = False,
    ) -> None:
        torch = torch_module()
        if num_threads:
            torch.set_num_threads(num_threads)
        self.encoder = encoder or TextEncoder(
            encoder_path,
            device=device,
            cache_dir=cache_dir,
            context_max_length=context_max_length,
            quantize=quantize,
        )
        self.device = device or self.encoder.device
        self.hidden = hidden
        self.rank = rank
        self.strengths = tuple(strengths)
        self.global_epochs = global_epochs
        self.global_weight_decay = global_weight_decay
        self.user_steps = user_steps
        self.cv_folds = cv_folds
        self.seed = seed
        self.in_dim = 2 * self.encoder.dim + 2
        self.adapters = AdapterCache(cache_size)
        self._loaded: Hashable | None = None  # whose adapter tensors are in the peft model now
        self.lock = threading.RLock()
        self.head_id: str | None = None
        self.head_meta: dict[str, str] = {}
        self.head_state: dict[str, Any] = {}
        self.build(init_head=True)

    @property
    def cache_size(self) -> int:
        return self.adapters.size

    # ------------------------------------------------------------------ model plumbing
    def build(self, init_head: bool) -> None:
        torch = torch_module()
        peft = peft_module()
        torch.manual_seed(self.seed)
        head = make_head(self.in_dim, self.hidden)
        if not init_head and self.head_state:
            head.load_state_dict(self.head_state)
        config = peft.LoraConfig(
            r=self.rank, lora_alpha=self.rank, target_modules=["fc1", "lin"], lora_dropout=0.0, bias="none"
        )
        torch.manual_seed(self.seed + 1)
        self.model = peft.get_peft_model(head, config).to(self.device)
        self.model.eval()
        self.init_adapter = {k: v.detach().clone() for k, v in self.adapter_state().items()}
        self._loaded = None

    def adapter_state(self) -> dict[str, Any]:
        return dict(peft_module().get_peft_model_state_dict(self.model))

    def set_adapter_state(self, state: dict[str, Any], owner: Hashable | None = None) -> None:
        peft_module().set_peft_model_state_dict(self.model, state)
        self._loaded = owner

    def plain_head_state(self) -> dict[str, Any]:
        """The head's own weights under the names of the unwrapped module (no LoRA tensors)."""
        return {
            k.replace(".base_layer", ""): v.detach().clone()
            for k, v in self.model.base_model.model.state_dict().items()
            if "lora_" not in k
        }

    def compute_head_id(self) -> str:
        h = hashlib.sha256()
        for name, tensor in sorted(self.plain_head_state().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def require_head(self) -> None:
        if self.head_id is None:
            raise LoraNotTrained("the lora reranker has no global head: train_global() or load() it first")

    def head_ready(self, head_id: str) -> None:
        """After training or loading: record the head and drop every adapter of the old one."""
        self.head_state = self.plain_head_state()
        self.head_id = head_id
        self.adapters.clear()
        self._loaded = None

    # ------------------------------------------------------------------ features
    def features(
        self, contexts: Sequence[str], candidates: Sequence[str], *, progress: bool = False
    ) -> np.ndarray:
        """Feature rows for (context_i, candidate_i) pairs of texts; each distinct text is encoded once."""
        uniq_ctx = list(dict.fromkeys(contexts))
        uniq_cand = list(dict.fromkeys(candidates))
        vx = self.encoder.encode_contexts(uniq_ctx, progress=progress)
        vc = self.encoder.encode(uniq_cand, progress=progress)
        ix = {t: i for i, t in enumerate(uniq_ctx)}
        ic = {t: i for i, t in enumerate(uniq_cand)}
        ec = vc[[ic[t] for t in candidates]]
        ex = vx[[ix[t] for t in contexts]]
        lengths = length_features(candidates) * LENGTH_FEATURE_WEIGHT
        return np.concatenate([ec, ec * ex * 4.0, lengths], axis=1).astype(np.float32)

    def pair_features(
        self, pairs: Sequence[PreferencePair], *, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        ctx = [context_text(p.context) for p in pairs]
        chosen = [message_text(p.chosen) for p in pairs]
        rejected = [message_text(p.rejected) for p in pairs]
        both = self.features(ctx + ctx, chosen + rejected, progress=progress)
        return both[: len(pairs)], both[len(pairs) :]

    def prepare_context(self, context: Sequence[Message | dict[str, Any]]) -> None:
        """Encode a conversation's context ahead of scoring (rerank mode does this while the
        candidates are being generated, so scoring only encodes the candidates)."""
        self.encoder.encode_contexts([context_text(context)])

    # ------------------------------------------------------------------ global head
    def train_global(self, pairs: Sequence[PreferencePair], *, progress: bool = False) -> dict[str, float]:
        """Fit the global head on all users' pairs (Bradley–Terry). Drops every cached adapter."""
        if not pairs:
            raise NotEnoughData("train_global needs at least one preference pair")
        xc, xr = self.pair_features(pairs, progress=progress)
        self.encoder.flush()
        return self.train_global_features(xc, xr)

    def train_global_features(self, xc: np.ndarray, xr: np.ndarray) -> dict[str, float]:
        return training.train_global_head(self, xc, xr)

    def save(self, path: str | Path, *, extra: dict[str, str] | None = None) -> Path:
        """Write the global head (safetensors with its config and the encoder's) to `path`."""
        self.require_head()
        meta = {
            **(extra or {}),
            **self.encoder.describe(),
            "format": HEAD_FORMAT,
            "head_id": str(self.head_id),
            "in_dim": str(self.in_dim),
            "hidden": str(self.hidden),
            "rank": str(self.rank),
            "features": FEATURE_VERSION,
        }
        out = storage.write_head(path, self.head_state, meta)
        self.head_meta = meta
        return out

    def load(self, path: str | Path) -> dict[str, str]:
        """Load a global head written by `save`. Drops cached adapters (they belong to the old head)."""
        state, meta = storage.read_head(path, self.in_dim)
        mine = self.encoder.describe()
        differ = {k: (meta.get(k), v) for k, v in mine.items() if k in meta and meta[k] != v}
        if differ:  # a head scores the features it was trained on; another encoder set-up drifts
            log.warning("lora head %s was trained with another encoder set-up (head, here): %s", path, differ)
        with self.lock:
            self.hidden = int(meta["hidden"])
            self.rank = int(meta["rank"])
            self.head_state = state
            self.build(init_head=False)
            self.head_ready(self.compute_head_id())
            self.head_meta = meta
        return self.head_meta

    # ------------------------------------------------------------------ per-user adapters
    def train_user(
        self,
        user: Hashable,
        pairs: Sequence[PreferencePair],
        *,
        strength: float | str | None = "auto",
        cache: bool = True,
        extra: dict[str, str] | None = None,
        stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
        prior: Hashable | None = None,
    ) -> bytes:
        """Train the user's adapter on their pairs (each weighted by its `weight`: implied pairs count
        less); returns the adapter as bytes (and caches it).

        `stop` is asked between training steps (and before and after encoding the pairs): once it
        returns True, `training.TrainingStopped` is raised and nothing is cached. `progress(done,
        total)` hears of every step. `prior`: the key of a cached adapter (a segment's) to start from
        and regularise toward."""
        if not pairs:
            raise NotEnoughData(f"no preference pairs to train an adapter for user {user!r}")
        steps = training.Steps(stop=stop, progress=progress)
        steps.check()
        xc, xr = self.pair_features(pairs)
        weights = [p.pair_weight for p in pairs]
        w = None if all(x == 1.0 for x in weights) else np.asarray(weights, dtype=np.float32)
        implicit = sum(1 for p in pairs if p.source == "implicit")  # implied by feedback signals
        extra = {**(extra or {}), "n_implicit": str(implicit)}
        return self.train_user_features(
            user, xc, xr, strength=strength, cache=cache, extra=extra, steps=steps, weights=w, prior=prior
        )

    def train_user_features(
        self,
        user: Hashable,
        xc: np.ndarray,
        xr: np.ndarray,
        *,
        strength: float | str | None = "auto",
        cache: bool = True,
        extra: dict[str, str] | None = None,
        steps: training.Steps | None = None,
        weights: np.ndarray | None = None,
        prior: Hashable | None = None,
    ) -> bytes:
        """Train `user`'s adapter on feature rows; strength "auto" = chosen by CV, None = off (the
        global head, or the prior: the cached adapter under the key `prior`, see `training.py`)."""
        self.require_head()
        if xc.shape[0] == 0:
            raise NotEnoughData(f"no preference pairs to train an adapter for user {user!r}")
        prior_state = None
        if prior is not None:
            item = self.adapters.get(prior)
            if item is None:
                raise NotEnoughData(f"no cached adapter {prior!r} to train user {user!r}'s adapter from")
            prior_state = item.state
        started = time.perf_counter()
        with self.lock:
            state, chosen, cv = training.train_adapter(
                self, xc, xr, strength, weights, steps=steps, prior=prior_state
            )
            meta = {
                **(extra or {}),
                **({"prior": str(prior)} if prior is not None else {}),
                "format": ADAPTER_FORMAT,
                "user": str(user),
                "head_id": str(self.head_id),
                "rank": str(self.rank),
                "strength": "off" if chosen is None else repr(chosen),
                "n_pairs": str(int(xc.shape[0])),
                "n_weighted": str(0 if weights is None else int((weights != 1.0).sum())),
                "cv": json.dumps(cv),
                "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "train_seconds": f"{time.perf_counter() - started:.3f}",
            }
            if cache:
                self._cache_put(user, state, meta)
            return self.to_bytes(state, meta)

    to_bytes = staticmethod(storage.adapter_to_bytes)

    def load_user(self, user: Hashable, adapter_bytes: bytes) -> dict[str, str]:
        """Put a stored adapter in the cache; refuses adapters of another head. Returns its metadata."""
        self.require_head()
        state, meta = storage.read_adapter(
            adapter_bytes, user=user, head_id=self.head_id, tensors=self.init_adapter
        )
        state = {k: v.to(self.device) for k, v in state.items()}
        with self.lock:
            self._cache_put(user, state, meta)
        return meta

    def _cache_put(self, user: Hashable, state: dict[str, Any], meta: dict[str, str]) -> None:
        if self._loaded == user:
            self._loaded = None
        evicted = self.adapters.put(user, CachedAdapter(state, meta))
        if self._loaded in evicted:
            self._loaded = None

    def forget(self, predicate: Any) -> int:
        """Drop cached adapters whose key matches `predicate(key)`; returns how many."""
        with self.lock:
            dropped = self.adapters.drop_where(predicate)
            if self._loaded in dropped:
                self._loaded = None
            return len(dropped)

    def has_user(self, user: Hashable) -> bool:
        return user in self.adapters

    def cached_users(self) -> list[Hashable]:
        return self.adapters.keys()

    def adapter_metadata(self, user: Hashable) -> dict[str, str] | None:
        item = self.adapters.get(user)
        return None if item is None else item.meta

    def adapter_nbytes(self, user: Hashable | None = None) -> int:
        """Bytes of adapter tensors held for one cached user (or for a fresh adapter)."""
        item = self.adapters.get(user)
        return item.nbytes if item is not None else CachedAdapter(self.init_adapter, {}).nbytes

    # ------------------------------------------------------------------ scoring
    def score_features(self, x: np.ndarray, *, user: Hashable | None) -> list[float]:
        torch = torch_module()
        self.require_head()
        with self.lock, torch.inference_mode():
            t = torch.from_numpy(x).to(self.device)
            item = self.adapters.get(user)
            if item is None:
                with self.model.disable_adapter():
                    out = self.model(t)
            else:
                if self._loaded != user:
                    self.set_adapter_state(item.state, owner=user)
                out = self.model(t)
            return [float(v) for v in out.reshape(-1).cpu()]

    def score(
        self,
        context: Sequence[Message | dict[str, Any]],
        candidates: Sequence[str],
        *,
        user: Hashable | None = None,
    ) -> list[float]:
        """Reward of each candidate for `user` (global head alone when the user has no cached adapter)."""
        if not candidates:
            return []
        ctx = context_text(context)
        x = self.features([ctx] * len(candidates), list(candidates))
        return self.score_features(x, user=user)
