"""The cold-start curve of the `lora` scorer family (`persona eval --cold-start`, docs/METHOD.md §4).

Mean per-user accuracy on each user's held-out pairs (the latest ~30%, as in `offline.py`) against the
number k of the user's own train pairs the model may use: their earliest 0, 2, 5, 10 and all train
pairs, for six ways of scoring:

* `global`: the global head;
* `segment`: the adapter of the learned segment a newcomer is put in from their first k pairs alone
  (nearest centroid of the taste vector of those pairs, `induction/learn_segments.py`). With 0 pairs
  nothing is known of the user's taste, so there is no learned segment and the global head scores;
* `segment-fit`: the same choice made by the model itself: of the global head and the segment
  adapters, the one under which the user's first k pairs are likeliest (ties and 0 pairs: global);
* `segment-assigned`: the adapter of the segment the user belongs to by all their train pairs (nearest
  centroid of their whole train split). It stands for an assignment an operator or the app makes
  without the user's judgements; with learned segments nobody can make it for a newcomer, since it uses
  more of the user's own pairs than the x axis allows (never their held-out ones): an upper bound of
  what a perfect learned assignment could give, not a newcomer's path;
* `own`: an adapter trained on the user's first k pairs (strength by cross-validation; with fewer than
  4 pairs there is nothing to cross-validate and the adapter is off, i.e. the global head);
* `own+segment`: the same with the adapter of `segment` (the newcomer's segment at k) as the prior
  (`rerank/lora/training.py`): training starts from it and is anchored to its scores, "off" is the
  segment adapter itself; with 0 pairs it is the global head.

The own adapters are what costs (about 60 cross-validated adapter fits per user): with `own_users`
they are trained for a seeded sample of that many evaluated users only, and the `own` and
`own+segment` points (and their gains, paired with `global` on the same users) are over that sample;
the other conditions are over all evaluated users.

Segment adapters are trained on the pooled train pairs of the segment's members (at most `member_cap`
per member, so no member dominates, and at most `max_pool` in all, a seeded sample: the adapter's
full-batch training stays bounded).

Nothing learnt about a user comes from their held-out pairs, and nothing that scores a user comes from
their other pairs except what the x axis allows (`segment-assigned` excepted, as said): the evaluated
users are split into `folds`; for each fold the global head, the segments (k-means over the taste
vectors) and the segment adapters are trained on everyone else's train pairs (cross-fitting), and the
fold's users are then assigned and scored. The global head is therefore also trained without the
user, the fair baseline for a newcomer.

Each pair is scored once per candidate (the scores do not depend on the order the candidates are
listed in); a pair counts when the chosen answer scores strictly higher, the both-orders rule of
`offline.py`. CIs are percentile bootstraps over users; gains are per-user differences to `global`
at the same k (paired).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, Field

from middleware.errors import NotEnoughData
from middleware.evaluation.offline import DEFAULT_MIN_PAIRS, bootstrap_ci, split_users
from middleware.induction.learn_segments import kmeans, taste_vector
from middleware.models import PreferencePair

CONDITIONS = ("global", "segment", "segment-fit", "segment-assigned", "own", "own+segment")
OWN_CONDITIONS = ("own", "own+segment")  # the costly ones, see `own_users`
GLOBAL = -1  # the segment index of "no segment: the global head"
DEFAULT_OWN_PAIRS: tuple[int | None, ...] = (0, 2, 5, 10, None)  # None: all the user's train pairs
DEFAULT_SEGMENTS_K = 4
DEFAULT_FOLDS = 5
DEFAULT_MEMBER_CAP = 50
DEFAULT_MAX_POOL = 500  # pairs a segment adapter is trained on at most (a seeded sample of the capped pool)


def own_label(k: int | None) -> str:
    return "all" if k is None else str(k)


class CurvePoint(BaseModel):
    condition: str
    own_pairs: str = Field(description="the user's own train pairs used: a number or 'all'")
    n_users: int
    mean_accuracy: float
    ci: tuple[float, float]
    gain: float = Field(description="mean per-user gain over `global` at the same own_pairs")
    gain_ci: tuple[float, float]
    users_better: int
    users_worse: int


class UserCurve(BaseModel):
    user: str
    fold: int
    segment: int = Field(description="the segment by all train pairs (index within the user's fold)")
    picked: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="segment / segment-fit -> own_pairs -> the segment used (-1: none, the global head)",
    )
    n_train: int
    n_test: int
    accuracy: dict[str, dict[str, float]] = Field(
        description="condition -> own_pairs -> accuracy (no own conditions for users without own adapters)"
    )


class ColdStartReport(BaseModel):
    data: str | None = None
    seed: int
    train_fraction: float
    own_pairs: list[str]
    folds: int
    segments_k: int
    member_cap: int
    max_pool: int
    n_users: int = Field(description="evaluated users (each has at least max(own_pairs) train pairs)")
    n_own_users: int = Field(description="of them, the users the own adapters were trained for")
    n_users_eligible: int
    n_test_pairs: int
    n_pool_users: int = Field(description="users whose train pairs train heads and segments")
    subset: str
    points: list[CurvePoint]
    own_segment_vs_own: list[CurvePoint] = Field(
        default_factory=list, description="own+segment minus own (the gain field), per own_pairs"
    )
    segment_sizes: list[list[int]] = Field(description="per fold, members of each learned segment")
    per_user: list[UserCurve]
    elapsed_s: float = 0.0
    notes: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> str:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode()

    def point(self, condition: str, own_pairs: str) -> CurvePoint:
        for p in self.points:
            if p.condition == condition and p.own_pairs == own_pairs:
                return p
        raise KeyError((condition, own_pairs))


def _accuracy(model: Any, xc: np.ndarray, xr: np.ndarray, key: Any) -> float:
    sc = np.asarray(model.score_features(xc, user=key))
    sr = np.asarray(model.score_features(xr, user=key))
    return float(np.mean(sc > sr))


def _capped(pairs: list[int], cap: int, rng: random.Random) -> list[int]:
    return pairs if len(pairs) <= cap else sorted(rng.sample(pairs, cap))


def _centroids(vectors: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, vectors.shape[1]))
    for j in range(k):
        total = vectors[labels == j].sum(axis=0)
        out[j] = total / (np.linalg.norm(total) or 1.0)
    return out


def _point(condition: str, label: str, accs: Sequence[float], base: Sequence[float], seed: int) -> CurvePoint:
    arr, ref = np.asarray(accs), np.asarray(base)
    gains = arr - ref
    return CurvePoint(
        condition=condition,
        own_pairs=label,
        n_users=len(arr),
        mean_accuracy=float(arr.mean()),
        ci=bootstrap_ci(arr.tolist(), seed=seed),
        gain=float(gains.mean()),
        gain_ci=bootstrap_ci(gains.tolist(), seed=seed),
        users_better=int(np.sum(gains > 0)),
        users_worse=int(np.sum(gains < 0)),
    )


def cold_start_curve(
    pairs_by_user: dict[str, list[PreferencePair]],
    *,
    model_factory: Any,
    own_pairs: Sequence[int | None] = DEFAULT_OWN_PAIRS,
    users: int | None = None,
    own_users: int | None = None,
    folds: int = DEFAULT_FOLDS,
    segments_k: int = DEFAULT_SEGMENTS_K,
    member_cap: int = DEFAULT_MEMBER_CAP,
    max_pool: int = DEFAULT_MAX_POOL,
    train_fraction: float = 0.7,
    seed: int = 0,
    progress: bool = True,
    data: str | None = None,
) -> ColdStartReport:
    """Compute the curve. `model_factory()` returns a fresh `LoraRewardModel`; every call must share
    one encoder (features are computed once, by the first model)."""
    started = time.perf_counter()
    ks = list(own_pairs)
    need = max([k for k in ks if k is not None] + [1])
    train, test, _ = split_users(
        pairs_by_user, train_fraction=train_fraction, min_pairs=min(DEFAULT_MIN_PAIRS, need + 2), seed=seed
    )
    eligible = sorted(u for u in test if len(train[u]) >= need and test[u])
    chosen = eligible
    if users is not None and users < len(eligible):
        chosen = sorted(random.Random(seed).sample(eligible, users))
    if len(chosen) < 2:
        raise NotEnoughData(f"the cold-start curve needs at least 2 users with {need}+ train pairs")
    folds = max(2, min(folds, len(chosen)))
    with_own = set(chosen)
    if own_users is not None and own_users < len(chosen):
        with_own = set(random.Random(seed + 1).sample(chosen, own_users))
    pool = sorted(train)  # every user's train pairs (the held-out parts of the evaluated users never)

    # features once: every train pair of every user, and the evaluated users' held-out pairs
    first = model_factory()
    flat = [p for u in pool for p in train[u]] + [p for u in chosen for p in test[u]]
    xc_all, xr_all = first.pair_features(flat, progress=progress)
    first.encoder.flush()
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    at = 0
    for u in pool:
        rows[f"train:{u}"] = (xc_all[at : at + len(train[u])], xr_all[at : at + len(train[u])])
        at += len(train[u])
    for u in chosen:
        rows[f"test:{u}"] = (xc_all[at : at + len(test[u])], xr_all[at : at + len(test[u])])
        at += len(test[u])
    tastes = {u: taste_vector(train[u]) for u in pool}

    order = list(chosen)
    random.Random(seed).shuffle(order)
    fold_of = {u: i % folds for i, u in enumerate(order)}
    labels = [own_label(k) for k in ks]
    results: list[UserCurve] = []
    segment_sizes: list[list[int]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(chosen), desc="cold start", unit="user", leave=False)
    try:
        for f in range(folds):
            members = [u for u in chosen if fold_of[u] == f]
            others = [u for u in pool if fold_of.get(u) != f]
            model = first if f == 0 else model_factory()
            xc = np.concatenate([rows[f"train:{u}"][0] for u in others])
            xr = np.concatenate([rows[f"train:{u}"][1] for u in others])
            model.train_global_features(xc, xr)
            vectors = np.array([tastes[u] for u in others])
            raw = kmeans(vectors, min(segments_k, len(others)), seed=seed)
            present = sorted(set(raw.tolist()))  # k-means may leave a segment empty: drop it
            seg_labels = np.array([present.index(int(label)) for label in raw])
            k = len(present)
            centres = _centroids(vectors, seg_labels, k)
            segment_sizes.append([int(np.sum(seg_labels == j)) for j in range(k)])
            rng = random.Random(seed + f)
            for j in range(k):
                seg_users = [u for u, lab in zip(others, seg_labels, strict=True) if lab == j]
                sc = np.concatenate([rows[f"train:{u}"][0] for u in seg_users])
                sr = np.concatenate([rows[f"train:{u}"][1] for u in seg_users])
                picked: list[int] = []
                at = 0
                for u in seg_users:
                    picked += [at + i for i in _capped(list(range(len(train[u]))), member_cap, rng)]
                    at += len(train[u])
                picked = _capped(picked, max_pool, rng)
                model.train_user_features(("segment", j), sc[picked], sr[picked])
            for u in members:
                results.append(
                    _user_curve(model, u, f, train[u], rows, tastes[u], centres, ks, labels, u in with_own)
                )
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    points: list[CurvePoint] = []
    versus_own: list[CurvePoint] = []
    for label in labels:
        for condition in CONDITIONS:
            scored = [r for r in results if condition in r.accuracy]
            accs = [r.accuracy[condition][label] for r in scored]
            points.append(_point(condition, label, accs, [r.accuracy["global"][label] for r in scored], seed))
        owned = [r for r in results if "own" in r.accuracy]
        versus_own.append(
            _point(
                "own+segment",
                label,
                [r.accuracy["own+segment"][label] for r in owned],
                [r.accuracy["own"][label] for r in owned],
                seed,
            )
        )
    return ColdStartReport(
        data=data,
        seed=seed,
        train_fraction=train_fraction,
        own_pairs=labels,
        folds=folds,
        segments_k=segments_k,
        member_cap=member_cap,
        max_pool=max_pool,
        n_users=len(chosen),
        n_own_users=len(with_own),
        n_users_eligible=len(eligible),
        n_test_pairs=sum(len(test[u]) for u in chosen),
        n_pool_users=len(pool),
        subset=(
            f"{len(chosen)} of {len(eligible)} users with at least {need} train pairs"
            + (f" (seeded sample, seed {seed})" if len(chosen) < len(eligible) else "")
        ),
        points=points,
        own_segment_vs_own=versus_own,
        segment_sizes=segment_sizes,
        per_user=sorted(results, key=lambda r: r.user),
        elapsed_s=time.perf_counter() - started,
    )


def _loglik(model: Any, xc: np.ndarray, xr: np.ndarray, key: Any) -> float:
    margin = np.asarray(model.score_features(xc, user=key)) - np.asarray(model.score_features(xr, user=key))
    return float(-np.logaddexp(0.0, -margin).sum())


def _best_fit(model: Any, xc: np.ndarray, xr: np.ndarray, k: int) -> int:
    """Of the global head (GLOBAL) and the k segment adapters, the one under which the pairs are
    likeliest; the global head wins ties."""
    best, best_ll = GLOBAL, _loglik(model, xc, xr, None)
    for j in range(k):
        ll = _loglik(model, xc, xr, ("segment", j))
        if ll > best_ll:
            best, best_ll = j, ll
    return best


def _user_curve(
    model: Any,
    user: str,
    fold: int,
    train: list[PreferencePair],
    rows: dict[str, tuple[np.ndarray, np.ndarray]],
    taste: np.ndarray,
    centres: np.ndarray,
    ks: Sequence[int | None],
    labels: Sequence[str],
    with_own: bool,
) -> UserCurve:
    tc, tr = rows[f"test:{user}"]
    xc, xr = rows[f"train:{user}"]
    assigned = int(np.argmax(centres @ taste))
    scored: dict[int, float] = {}

    def accuracy_of(segment: int) -> float:  # each segment adapter scores the held-out pairs once
        if segment not in scored:
            scored[segment] = _accuracy(model, tc, tr, None if segment == GLOBAL else ("segment", segment))
        return scored[segment]

    conditions = CONDITIONS if with_own else [c for c in CONDITIONS if c not in OWN_CONDITIONS]
    acc: dict[str, dict[str, float]] = {c: {} for c in conditions}
    picked: dict[str, dict[str, int]] = {"segment": {}, "segment-fit": {}}
    for k, label in zip(ks, labels, strict=True):
        n = len(train) if k is None else min(k, len(train))
        inferred = int(np.argmax(centres @ taste_vector(train[:n]))) if n else GLOBAL
        fitted = _best_fit(model, xc[:n], xr[:n], len(centres)) if n else GLOBAL
        picked["segment"][label], picked["segment-fit"][label] = inferred, fitted
        acc["global"][label] = accuracy_of(GLOBAL)
        acc["segment"][label] = accuracy_of(inferred)
        acc["segment-fit"][label] = accuracy_of(fitted)
        acc["segment-assigned"][label] = accuracy_of(assigned)
        if not with_own:
            continue
        if n == 0:
            acc["own"][label] = acc["own+segment"][label] = accuracy_of(GLOBAL)
            continue
        own_key, prior_key = ("own", user, n), ("own+segment", user, n)
        model.train_user_features(own_key, xc[:n], xr[:n])
        acc["own"][label] = _accuracy(model, tc, tr, own_key)
        model.train_user_features(prior_key, xc[:n], xr[:n], prior=("segment", inferred))
        acc["own+segment"][label] = _accuracy(model, tc, tr, prior_key)
        model.forget({own_key, prior_key}.__contains__)
    return UserCurve(
        user=user,
        fold=fold,
        segment=assigned,
        picked=picked,
        n_train=len(train),
        n_test=len(tc),
        accuracy=acc,
    )


def format_table(report: ColdStartReport) -> str:
    """The curve as text: accuracy [CI] per condition and own_pairs, then gains over global [CI]."""
    head = f"{'':18}" + "".join(f"{'own=' + label:>24}" for label in report.own_pairs)
    lines = [f"mean per-user accuracy [95% CI], {report.subset}", head]
    for condition in CONDITIONS:
        cells = []
        for label in report.own_pairs:
            p = report.point(condition, label)
            cells.append(f"{p.mean_accuracy:.3f} [{p.ci[0]:.3f},{p.ci[1]:.3f}]".rjust(24))
        lines.append(f"{condition:18}" + "".join(cells))
    lines.append("gain over global [95% CI], paired per user (JSON: users better/worse)")
    for condition in CONDITIONS[1:]:
        cells = []
        for label in report.own_pairs:
            p = report.point(condition, label)
            cells.append(f"{p.gain:+.3f} [{p.gain_ci[0]:+.3f},{p.gain_ci[1]:+.3f}]".rjust(24))
        lines.append(f"{condition:18}" + "".join(cells))
    cells = [
        f"{p.gain:+.3f} [{p.gain_ci[0]:+.3f},{p.gain_ci[1]:+.3f}]".rjust(24)
        for p in report.own_segment_vs_own
    ]
    lines.append(f"{'own+seg vs own':18}" + "".join(cells))
    return "\n".join(lines)


def plot_curve(report: ColdStartReport, path: str | Path) -> Path:
    """PNG: accuracy vs own pairs per condition (95% CI bars), and the gains over global."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = np.arange(len(report.own_pairs))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 7.0), sharex=True)
    for i, condition in enumerate(CONDITIONS):
        pts = [report.point(condition, label) for label in report.own_pairs]
        shift = (i - (len(CONDITIONS) - 1) / 2) * 0.05
        means = np.array([p.mean_accuracy for p in pts])
        err = np.array([[p.mean_accuracy - p.ci[0] for p in pts], [p.ci[1] - p.mean_accuracy for p in pts]])
        top.errorbar(xs + shift, means, yerr=err, marker="o", ms=4, capsize=3, label=condition)
        if condition != "global":
            gains = np.array([p.gain for p in pts])
            gerr = np.array([[p.gain - p.gain_ci[0] for p in pts], [p.gain_ci[1] - p.gain for p in pts]])
            bottom.errorbar(xs + shift, gains, yerr=gerr, marker="o", ms=4, capsize=3, label=condition)
        else:
            bottom.plot([], [])  # keep the colours of the two panels in step
    bottom.axhline(0.0, color="#888888", lw=0.8)
    top.set_ylabel("mean per-user held-out accuracy")
    bottom.set_ylabel("gain over global (paired)")
    bottom.set_xlabel("the user's own train pairs used")
    bottom.set_xticks(xs, report.own_pairs)
    top.legend(fontsize=8, loc="best")
    name = Path(report.data).name if report.data else "data"
    top.set_title(f"cold start, lora family: {name}\n{report.subset}", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
