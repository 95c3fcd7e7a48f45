"""Training of the `lora` reward model: the global head (Bradley–Terry over all users' pairs) and one
user's LoRA adapter (full-batch L-BFGS, anchored to the global head, strength chosen by k-fold CV).

A user's training is a sequence of fits (one per CV fold and strength, then the final one). A
`Steps` object counts them for progress and carries a `stop` check, asked before every fit and at
every L-BFGS evaluation: once it says stop, training raises `TrainingStopped` at once.

An adapter can be trained with a *prior*, another adapter's state (a segment's, docs/METHOD.md §4):
training then starts from the prior, the anchor pulls the scores toward the prior's instead of the
global head's, the ridge pulls lora_B toward the prior's, and "off" means the prior itself. With few
pairs the user's model is the prior's; their own pairs move it only as far as cross-validation on
them supports.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from middleware.rerank.lora.base import torch_module

if TYPE_CHECKING:  # pragma: no cover
    from middleware.rerank.lora.model import LoraRewardModel


def train_global_head(model: LoraRewardModel, xc: np.ndarray, xr: np.ndarray) -> dict[str, float]:
    """Fit the head (not the LoRA tensors) on feature rows of chosen/rejected answers."""
    torch = torch_module()
    with model.lock:
        model.build(init_head=True)
        net = model.model
        generator = torch.Generator().manual_seed(model.seed)
        tc = torch.from_numpy(xc).to(model.device)
        tr = torch.from_numpy(xr).to(model.device)
        params = [p for n, p in net.named_parameters() if "lora_" not in n]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=model.global_weight_decay)
        n = tc.shape[0]
        batch = min(256, n)
        steps_per_epoch = max(1, math.ceil(n / batch))
        net.train()
        loss_value = 0.0
        with net.disable_adapter():
            for _ in range(model.global_epochs):
                perm = torch.randperm(n, generator=generator).to(model.device)
                for s in range(steps_per_epoch):
                    idx = perm[s * batch : (s + 1) * batch]
                    margin = net(tc[idx]) - net(tr[idx])
                    loss = torch.nn.functional.softplus(-margin).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    loss_value = float(loss.detach())
        net.eval()
        for p in params:
            p.requires_grad_(False)
        model.head_ready(model.compute_head_id())
        with torch.inference_mode(), net.disable_adapter():
            acc = float(((net(tc) - net(tr)) > 0).float().mean())
    return {"loss": loss_value, "train_accuracy": acc, "pairs": float(n)}


class TrainingStopped(Exception):
    """A user's training was asked to stop (its job was cancelled); nothing it made is kept."""


@dataclass
class Steps:
    """The fits of one user's training: how many are planned, how many are done, whether to stop."""

    stop: Callable[[], bool] | None = None
    progress: Callable[[int, int], None] | None = None
    total: int = 0
    done: int = 0

    def check(self) -> None:
        if self.stop is not None and self.stop():
            raise TrainingStopped(f"stopped after {self.done} of {self.total} training steps")

    def plan(self, total: int) -> None:
        self.total = total
        self._report()

    def finished_one(self) -> None:
        self.done += 1
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)


def planned_fits(model: LoraRewardModel, n: int, strength: float | str | None) -> int:
    """The fits a training of n pairs makes: CV folds x strengths (for "auto"), then the final one."""
    cv = min(model.cv_folds, n) * len(model.strengths) if strength == "auto" and n >= 4 else 0
    return cv + 1


def _global_scores(model: LoraRewardModel, x: Any) -> Any:
    with model.model.disable_adapter():
        return model.model(x)


def _base_scores(model: LoraRewardModel, x: Any, prior: dict[str, Any] | None) -> Any:
    """Scores of what the adapter is anchored to: the global head, or the prior adapter."""
    if prior is None:
        return _global_scores(model, x)
    model.set_adapter_state(prior)
    return model.model(x)


def off_state(model: LoraRewardModel, prior: dict[str, Any] | None = None) -> dict[str, Any]:
    """The adapter that adds nothing to its base: the prior's tensors, or the init with lora_B zeroed
    (which scores exactly like the global head)."""
    if prior is not None:
        return {k: v.detach().clone() for k, v in prior.items()}
    state = {k: v.detach().clone() for k, v in model.init_adapter.items()}
    for key in state:
        if "lora_B" in key:
            state[key].zero_()
    return state


def fit_adapter(
    model: LoraRewardModel,
    xc: Any,
    xr: Any,
    strength: float,
    steps: int,
    w: Any = None,
    *,
    stop: Steps | None = None,
    prior: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the LoRA params from the fixed init (or from `prior`) on (xc, xr), each pair weighted by
    `w` (None: all 1); return the adapter state (one step of `stop`, which may end it at any L-BFGS
    evaluation)."""
    torch = torch_module()
    if stop is not None:
        stop.check()
    net = model.model
    with torch.no_grad():
        gc = _base_scores(model, xc, prior)
        gr = _base_scores(model, xr, prior)
    model.set_adapter_state(model.init_adapter if prior is None else prior)
    named = [(n, p) for n, p in net.named_parameters() if "lora_" in n]
    params = [p for _, p in named]
    # the ridge's centre: zero, or the prior's lora_B (the state dict names lack the adapter name)
    centre = {
        n: (prior or {}).get(n.replace(".default.", "."), torch.zeros_like(p)).detach().clone()
        for n, p in named
        if "lora_B" in n
    }
    # full-batch L-BFGS: a user has tens of pairs, so a few dozen iterations converge
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    net.train()

    def closure() -> Any:
        if stop is not None:
            stop.check()
        opt.zero_grad()
        sc = net(xc)
        sr = net(xr)
        losses = torch.nn.functional.softplus(-(sc - sr))
        drift = (sc - gc) ** 2 + (sr - gr) ** 2
        # a pair's weight scales all it adds, its preference and its anchor: weight 0 is no pair at all
        bt = losses.mean() if w is None else (losses * w).sum() / w.sum()
        anchor = drift.mean() if w is None else (drift * w).sum() / w.sum()
        # a light ridge on lora_B keeps directions the user's pairs do not constrain at zero (at the prior)
        ridge = sum(((p - centre[n]) ** 2).sum() for n, p in named if "lora_B" in n)
        loss = bt + strength * anchor + 1e-2 * ridge
        loss.backward()
        return loss

    try:
        opt.step(closure)
    finally:
        net.eval()
    if stop is not None:
        stop.finished_one()
    return {k: v.detach().clone() for k, v in model.adapter_state().items()}


def pair_loglik(
    model: LoraRewardModel,
    xc: Any,
    xr: Any,
    state: dict[str, Any] | None,
    w: Any = None,
    *,
    prior: dict[str, Any] | None = None,
) -> float:
    """Log-likelihood of the pairs under `state` (None: under the base, the global head or `prior`)."""
    torch = torch_module()
    with torch.inference_mode():
        if state is None:
            margin = _base_scores(model, xc, prior) - _base_scores(model, xr, prior)
        else:
            model.set_adapter_state(state)
            margin = model.model(xc) - model.model(xr)
        loglik = -torch.nn.functional.softplus(-margin)
        return float(loglik.sum() if w is None else (loglik * w).sum())


def choose_strength(
    model: LoraRewardModel,
    xc: np.ndarray,
    xr: np.ndarray,
    folds: int | None = None,
    weights: np.ndarray | None = None,
    *,
    steps: Steps | None = None,
    prior: dict[str, Any] | None = None,
) -> tuple[float | None, dict[str, float]]:
    """Pick the anchor penalty (or None = off: the base itself) by k-fold CV on the user's own train pairs."""
    torch = torch_module()
    n = xc.shape[0]
    if n < 4:
        return None, {}
    k = min(folds or model.cv_folds, n)
    order = np.random.default_rng(model.seed).permutation(n)
    fold_of = np.empty(n, dtype=int)
    fold_of[order] = np.arange(n) % k
    totals: dict[str, float] = {"off": 0.0, **{str(s): 0.0 for s in model.strengths}}
    tc_all = torch.from_numpy(xc).to(model.device)
    tr_all = torch.from_numpy(xr).to(model.device)
    w_all = None if weights is None else torch.from_numpy(weights.astype(np.float32)).to(model.device)
    for f in range(k):
        train_idx = torch.from_numpy(np.flatnonzero(fold_of != f)).to(model.device)
        val_idx = torch.from_numpy(np.flatnonzero(fold_of == f)).to(model.device)
        tc, tr = tc_all[train_idx], tr_all[train_idx]
        vc, vr = tc_all[val_idx], tr_all[val_idx]
        tw = None if w_all is None else w_all[train_idx]
        vw = None if w_all is None else w_all[val_idx]
        totals["off"] += pair_loglik(model, vc, vr, None, vw, prior=prior)
        for s in model.strengths:
            state = fit_adapter(model, tc, tr, s, model.user_steps, tw, stop=steps, prior=prior)
            totals[str(s)] += pair_loglik(model, vc, vr, state, vw)
    best = max(totals, key=lambda name: (totals[name], name == "off"))
    return (None if best == "off" else float(best)), {key: v / n for key, v in totals.items()}


def train_adapter(
    model: LoraRewardModel,
    xc: np.ndarray,
    xr: np.ndarray,
    strength: float | str | None,
    weights: np.ndarray | None = None,
    *,
    steps: Steps | None = None,
    prior: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], float | None, dict[str, float]]:
    """(adapter state, chosen strength or None = off, CV log-likelihoods); each pair weighted by
    `weights` (None: all 1). Call under `model.lock`."""
    torch = torch_module()
    steps = steps or Steps()
    steps.plan(planned_fits(model, xc.shape[0], strength))
    steps.check()
    cv: dict[str, float] = {}
    chosen: float | None
    if strength == "auto":
        chosen, cv = choose_strength(model, xc, xr, weights=weights, steps=steps, prior=prior)
    else:
        chosen = None if strength is None else float(strength)
    if chosen is None:
        state = off_state(model, prior)
    else:
        tc = torch.from_numpy(xc).to(model.device)
        tr = torch.from_numpy(xr).to(model.device)
        w = None if weights is None else torch.from_numpy(weights.astype(np.float32)).to(model.device)
        state = fit_adapter(model, tc, tr, chosen, model.user_steps, w, stop=steps, prior=prior)
    steps.check()
    if steps.done < steps.total:  # "off" needs no final fit
        steps.done = steps.total - 1
        steps.finished_one()
    return state, chosen, cv
