"""Scorers for the offline protocol: random, length, global (reward head), lora (head + per-user adapter),
judge (persona-informed LLM judge) and judge-default (the same judge without a persona).

`make_scorer(name, **opts)` builds one. `judge` and `judge-default` need the LLM settings
(`make_scorer("judge", settings=Settings(), model=...)`, see `judge_scorer.LLMJudgeScorer`); `judge`
can also wrap a judge callable (`make_scorer("judge", judge=fn)` with
`fn(user, context, candidates) -> list[float]`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from middleware.errors import ValidationFailed
from middleware.models import Message, PreferencePair, message_text

SCORERS = ("random", "length", "global", "lora", "lora-other", "judge", "judge-default")
JUDGE_OPTS = ("model", "max_calls_per_user", "max_tokens_per_user", "concurrency")


class RandomScorer:
    """A fixed pseudo-random score per (user, candidate): order-independent, ~50% on both orders."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None:
        return None

    def score(self, user: str, context: list[Message], candidates: list[str]) -> list[float]:
        out = []
        for c in candidates:
            digest = hashlib.sha256(f"{self.seed}\x00{user}\x00{c}".encode()).digest()
            out.append(int.from_bytes(digest[:8], "big") / 2**64)
        return out


class LengthScorer:
    """Prefers the shorter or the longer candidate, whichever the train pairs of all users favour."""

    def __init__(self) -> None:
        self.sign = 1.0

    def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None:
        longer = shorter = 0
        for pairs in train_by_user.values():
            for p in pairs:
                a, b = len(message_text(p.chosen)), len(message_text(p.rejected))
                longer += a > b
                shorter += a < b
        self.sign = 1.0 if longer >= shorter else -1.0

    def score(self, user: str, context: list[Message], candidates: list[str]) -> list[float]:
        return [self.sign * len(c) for c in candidates]


class JudgeScorer:
    """Wraps an LLM judge: `judge(user, context, candidates) -> list[float]` (no training)."""

    def __init__(self, judge: Callable[[str, list[Message], list[str]], list[float]]) -> None:
        self.judge = judge

    def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None:
        return None

    def score(self, user: str, context: list[Message], candidates: list[str]) -> list[float]:
        return list(self.judge(user, context, candidates))


class GlobalScorer:
    """The global reward head of a `LoraRewardModel` (no per-user adapter)."""

    def __init__(self, model: Any = None, *, shared: bool = False, **model_opts: Any) -> None:
        self._model = model
        self._model_opts = model_opts
        self._shared = shared  # a view on a model another scorer fits

    @property
    def model(self) -> Any:
        if self._model is None:
            from middleware.rerank.lora import LoraRewardModel

            self._model = LoraRewardModel(**self._model_opts)
        return self._model

    def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None:
        if self._shared:
            return
        pairs = [p for ps in train_by_user.values() for p in ps]
        self.model.train_global(pairs, progress=True)

    def score(self, user: str, context: list[Message], candidates: list[str]) -> list[float]:
        return list(self.model.score(context, candidates, user=None))


class LoraScorer(GlobalScorer):
    """Global head + a per-user LoRA adapter trained (lazily, at the user's first score) on their train pairs."""

    def __init__(
        self, model: Any = None, *, strength: float | str | None = "auto", **model_opts: Any
    ) -> None:
        model_opts.setdefault("cache_size", 100_000)  # evaluation keeps every user's adapter
        super().__init__(model, **model_opts)
        self.strength = strength
        self._train: dict[str, list[PreferencePair]] = {}
        self.adapter_bytes: dict[str, int] = {}
        self.strengths_chosen: dict[str, str] = {}

    def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None:
        super().fit(train_by_user)
        self._train = {u: list(ps) for u, ps in train_by_user.items()}

    def as_global(self) -> GlobalScorer:
        """The same global head without adapters (shares the fitted model; its fit is a no-op)."""
        return GlobalScorer(self.model, shared=True)

    def pairs_for(self, user: str) -> list[PreferencePair] | None:
        """The train pairs `user`'s adapter learns from (their own)."""
        return self._train.get(user)

    def _ensure(self, user: str) -> None:
        pairs = self.pairs_for(user)
        if self.model.has_user(user) or not pairs:
            return
        blob = self.model.train_user(user, pairs, strength=self.strength)
        self.adapter_bytes[user] = len(blob)
        meta = self.model.adapter_metadata(user) or {}
        self.strengths_chosen[user] = meta.get("strength", "?")

    def score(self, user: str, context: list[Message], candidates: list[str]) -> list[float]:
        self._ensure(user)
        return list(self.model.score(context, candidates, user=user))


class LoraOtherScorer(LoraScorer):
    """Control for `lora`: each user is scored with an adapter trained on *another* user's train pairs
    (a seeded derangement of the evaluated users). Adapters that help their own user more than this
    have learnt something personal; as much as this, only something about the data at large."""

    def __init__(
        self, model: Any = None, *, strength: float | str | None = "auto", **model_opts: Any
    ) -> None:
        self.donor_seed = int(model_opts.pop("donor_seed", model_opts.get("seed", 0)))
        super().__init__(model, strength=strength, **model_opts)
        self.donors: dict[str, str] = {}

    def fit(self, train_by_user: dict[str, list[PreferencePair]]) -> None:
        super().fit(train_by_user)
        users = sorted(u for u, ps in train_by_user.items() if ps)
        random.Random(self.donor_seed).shuffle(users)
        # each user takes the next one's pairs in a shuffled ring: nobody gets their own
        self.donors = {u: users[(i + 1) % len(users)] for i, u in enumerate(users)} if len(users) > 1 else {}

    def pairs_for(self, user: str) -> list[PreferencePair] | None:
        """Another user's train pairs (the next one in the ring)."""
        donor = self.donors.get(user)
        return None if donor is None else self._train.get(donor)


def default_cache_dir() -> Path:
    """The `cache_dir` setting's default (`persona eval` passes the configured one)."""
    from middleware.config import Settings

    return Path(str(Settings.model_fields["cache_dir"].default))


def make_scorer(name: str, **opts: Any) -> Any:
    """Build a scorer by name: random | length | global | lora | judge | judge-default.

    The judges need `settings=<Settings>` (LLM access; optional `model`, `max_calls_per_user`,
    `max_tokens_per_user`, `concurrency`), or for `judge` a `judge=<callable>`.
    """
    if name == "random":
        return RandomScorer(seed=int(opts.get("seed", 0)))
    if name == "length":
        return LengthScorer()
    if name == "judge" and opts.get("judge") is not None:
        return JudgeScorer(opts["judge"])
    if name in ("judge", "judge-default"):
        if opts.get("settings") is None:
            raise ValidationFailed(
                f"the {name} scorer needs an LLM: build it with make_scorer({name!r}, settings=Settings()) "
                "(or make_scorer('judge', judge=<callable>) where callable(user, context, candidates) "
                "-> list[float])"
            )
        from middleware.evaluation.judge_scorer import LLMJudgeScorer

        return LLMJudgeScorer(
            opts["settings"],
            personalized=name == "judge",
            **{k: opts[k] for k in JUDGE_OPTS if opts.get(k) is not None},
        )
    if name in ("global", "lora", "lora-other"):
        model_opts = {k: v for k, v in opts.items() if k not in ("seed", "judge", "settings")}
        model_opts.setdefault("cache_dir", default_cache_dir())
        if "seed" in opts:
            model_opts["seed"] = int(opts["seed"])
        if name == "global":
            return GlobalScorer(model_opts.pop("model", None), **model_opts)
        if name == "lora-other":
            return LoraOtherScorer(model_opts.pop("model", None), **model_opts)
        return LoraScorer(model_opts.pop("model", None), **model_opts)
    raise ValidationFailed(f"unknown scorer {name!r}; expected one of {', '.join(SCORERS)}")
