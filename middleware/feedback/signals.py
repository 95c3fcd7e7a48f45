"""Signals on answers -> a reward per answer, the user's smoothed sentiment, and implied preference pairs.

- Each signal pulls the answer's reward: reward = 0.5 + 0.5 * sum(weight * value), clipped to [0, 1]
  (`PERSONA_FEEDBACK_WEIGHTS`); value is 1 for thumbs, regenerate, copy and edit, the dwell's share of
  `PERSONA_FEEDBACK_DWELL_FULL_S`, and for a follow-up the user's smoothed sentiment: the message is
  scored by VADER (-1..1) and folded into an exponentially weighted mean per user
  (`PERSONA_FEEDBACK_SENTIMENT_ALPHA`), so one outburst moves the reward a little, a lasting mood more.
- The store adds a signal and recomputes the reward in one script: a retried signal (same
  `idempotency_key`, or the same content) counts once.
- Thumbs up and thumbs down are one verdict per answer: the latest replaces the earlier one, so the
  reward is that of the latest alone (a verdict sent again without `idempotency_key` after another
  one is the latest again; with a key already used it is a retry and changes nothing).
- When the reward changes, `on_reward(tenant, user, arm, reward, previous)` is called (the auto mode's
  policy update, `Policy.on_reward`; `previous`: the answer's reward before, None for its first).
- Pairs implied by signals go to the user's preference log as `source: implicit` with the weight
  `PERSONA_FEEDBACK_IMPLICIT_WEIGHT` (explicit judgements weigh 1): an edit (the edited text over the
  answer); a positive signal on an answer to a prompt whose earlier answer was regenerated or thumbed
  down (new over old); thumbs up against thumbs down on two answers to the same prompt. They need the
  texts (`PERSONA_FEEDBACK_KEEP_TEXT`, or the edited text given in the signal for the chosen side).
  These follow each answer's latest verdict: when it changes, the pairs the earlier one implied and
  the latest does not are withdrawn from the log.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field

from middleware.config import Settings
from middleware.errors import NotFound, ValidationFailed
from middleware.models import Message, PreferencePair
from middleware.store.feedback import FeedbackStore
from middleware.store.preferences import PreferenceStore

log = logging.getLogger("middleware.feedback")

SignalType = Literal["thumbs_up", "thumbs_down", "regenerate", "copy", "edit", "follow_up", "dwell"]
POSITIVE = ("thumbs_up", "copy")
IMPLICIT = "implicit"
# signals that are one verdict per answer (the latest replaces the earlier), by their slot
VERDICT_SLOTS = {"thumbs_up": "thumbs", "thumbs_down": "thumbs"}
# what a signal says of an answer among the answers to the same prompt
PROMPT_VERDICTS = {"thumbs_up": "up", "copy": "up", "thumbs_down": "down", "regenerate": "regenerate"}
# the kinds of pair implied by verdicts on two answers to one prompt
VERDICT_PAIR_KINDS = ("thumbs", "regenerate")


class SignalIn(BaseModel):
    """One signal about one answer (its `x-persona-response-id`)."""

    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    signal: SignalType
    value: float | None = Field(default=None, ge=0, le=1e9, description="dwell: seconds")
    text: str | None = Field(
        default=None, max_length=50_000, description="edit: the edited answer; follow_up: the message"
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)


class RewardHook(Protocol):
    """Called when an answer's reward changes (e.g. to update the per-user policy of its arm)."""

    async def __call__(
        self, tenant: str, user: str, arm: str, reward: float, previous: float | None = None
    ) -> None: ...


async def no_reward_hook(
    tenant: str, user: str, arm: str, reward: float, previous: float | None = None
) -> None:
    """The default hook: rewards are only stored."""


@lru_cache(maxsize=1)
def _analyzer() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER's compound score of a message, -1 (negative) .. 1 (positive)."""
    return float(_analyzer().polarity_scores(text)["compound"])


@dataclass(frozen=True)
class SignalResult:
    id: str
    response_id: str
    signal: str
    created: bool
    reward: float | None
    implied_pairs: int
    user: str  # the answer's user (not shown)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "response_id": self.response_id,
            "signal": self.signal,
            "created": self.created,
            "reward": self.reward,
            "implied_pairs": self.implied_pairs,
        }


def signal_id(item: SignalIn) -> str:
    if item.idempotency_key:
        return "key_" + hashlib.sha256(item.idempotency_key.encode()).hexdigest()[:32]
    content = orjson.dumps([item.response_id, item.signal, item.value, item.text])
    return hashlib.sha256(content).hexdigest()[:32]


def pair_id(kind: str, chosen: str, rejected: str) -> str:
    return "implicit_" + hashlib.sha256(f"{kind}\n{chosen}\n{rejected}".encode()).hexdigest()[:32]


class FeedbackService:
    def __init__(
        self, settings: Settings, store: FeedbackStore, preferences: PreferenceStore, on_reward: RewardHook
    ) -> None:
        self._settings = settings
        self._store = store
        self._preferences = preferences
        self._on_reward = on_reward

    def check(self, item: SignalIn) -> None:
        """A signal type not enabled, or one missing what it needs: 422."""
        if item.signal not in self._settings.feedback_signals:
            raise ValidationFailed(
                f"the signal {item.signal!r} is not enabled on this server", param="signal"
            )
        if item.signal == "follow_up" and not (item.text or "").strip():
            raise ValidationFailed("a follow_up signal needs the message as 'text'", param="text")
        if item.signal == "dwell" and item.value is None:
            raise ValidationFailed("a dwell signal needs the seconds as 'value'", param="value")

    async def owner(self, tenant: str, user: str | None, response_id: str) -> str:
        """The user an answer of this tenant belongs to; 404 for an unknown or expired id, or one of
        another tenant or user."""
        found = await self._store.owner(response_id)
        if found is None or found[0] != tenant or (user is not None and found[1] != user):
            raise NotFound(
                f"no answer {response_id!r} (unknown, expired, or not this caller's)", param="response_id"
            )
        return found[1]

    def pull(self, item: SignalIn) -> float:
        weight = float(self._settings.feedback_weights.get(item.signal, 0.0))
        if item.signal == "dwell":
            full = max(self._settings.feedback_dwell_full_s, 1e-9)
            return weight * min(1.0, (item.value or 0.0) / full)
        return weight  # a follow-up's weight is multiplied by the smoothed sentiment in the store

    async def send(self, tenant: str, user: str | None, items: Sequence[SignalIn]) -> list[SignalResult]:
        for item in items:
            self.check(item)
        owners = {
            rid: await self.owner(tenant, user, rid) for rid in dict.fromkeys(i.response_id for i in items)
        }
        return [await self._send_one(tenant, owners[item.response_id], item) for item in items]

    async def _send_one(self, tenant: str, user: str, item: SignalIn) -> SignalResult:
        sid = signal_id(item)
        score = sentiment(item.text or "") if item.signal == "follow_up" else None
        signal = orjson.dumps(
            {"signal": item.signal, "value": item.value, "text": item.text, "sentiment": score, "at": _now()}
        )
        added = await self._store.add_signal(
            tenant, user, item.response_id, sid, signal, self.pull(item), score,
            self._settings.feedback_sentiment_alpha,
            verdict_slot=VERDICT_SLOTS.get(item.signal), retake=item.idempotency_key is None,
        )  # fmt: skip
        if added is None:  # expired since the owner was read
            raise NotFound(
                f"no answer {item.response_id!r} (unknown, expired, or not this caller's)",
                param="response_id",
            )
        record = orjson.loads(added.record)
        pairs = 0
        if added.new:
            if added.reward is not None and added.reward != added.previous_reward:
                try:
                    await self._on_reward(
                        tenant, user, str(record.get("arm") or "inject"), added.reward, added.previous_reward
                    )
                except Exception:  # the signal is stored; the policy catches up with the next one
                    log.exception("on_reward hook failed")
            pairs = await self._implied_pairs(tenant, user, item, record)
        return SignalResult(sid, item.response_id, item.signal, added.new, added.reward, pairs, user)

    async def _implied_pairs(self, tenant: str, user: str, item: SignalIn, record: dict[str, Any]) -> int:
        found: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = []  # kind, ids, records
        rid = item.response_id
        if item.signal == "edit" and item.text and record.get("answer") and item.text != record["answer"]:
            edited = {**record, "answer": item.text}
            found.append(("edit", f"{rid}:edited:{signal_id(item)}", rid, edited, record))
        verdict = PROMPT_VERDICTS.get(item.signal)
        digest = record.get("prompt_digest")
        stale: list[str] = []
        if verdict is not None and digest:
            marked = await self._store.mark_prompt(tenant, user, digest, rid, verdict)
            others = marked.latest
            others.pop(rid, None)
            implied = _verdict_pairs(rid, verdict, others)
            ids = [c if c != rid else r for _, c, r in implied]
            for (kind, chosen_id, rejected_id), raw in zip(
                implied, await self._store.records(tenant, user, ids), strict=True
            ):
                if raw is None:
                    continue
                other = orjson.loads(raw)
                sides = (record, other) if chosen_id == rid else (other, record)
                found.append((kind, chosen_id, rejected_id, *sides))
            if marked.before not in (None, verdict):
                stale = _stale_pairs(rid, list(others), {pair_id(*p) for p in implied})
        if stale:
            withdrawn = await self._preferences.withdraw(tenant, user, stale)
            log.info("%d implied pair(s) withdrawn: the answer's verdict changed", len(withdrawn))
        records = []
        for kind, chosen_id, rejected_id, chosen, rejected in found:
            if not (
                chosen.get("answer")
                and rejected.get("answer")
                and (chosen.get("prompt") or rejected.get("prompt"))
            ):
                continue  # the texts were not kept
            pid = pair_id(kind, chosen_id, rejected_id)
            pair = PreferencePair(
                id=pid,
                user_id=user,
                context=[Message(role="user", content=chosen.get("prompt") or rejected.get("prompt"))],
                chosen=Message(role="assistant", content=chosen["answer"]),
                rejected=Message(role="assistant", content=rejected["answer"]),
                timestamp=datetime.now(UTC).isoformat(),
                source=IMPLICIT,
                item_id=f"{kind}:{chosen_id}>{rejected_id}",
                weight=self._settings.feedback_implicit_weight,
            )
            records.append((pid, "pair", pair.model_dump(mode="json")))
        if not records:
            return 0
        return sum(await self._preferences.add(tenant, user, records))


def _verdict_pairs(response_id: str, verdict: str, others: dict[str, str]) -> list[tuple[str, str, str]]:
    """(kind, chosen id, rejected id) of the pairs this answer's verdict implies against the latest
    verdicts of the other answers to its prompt: up over down (thumbs) or over regenerated
    (regenerate); down or regenerated under up."""
    implied = []
    for other, theirs in others.items():
        kind = "thumbs" if {verdict, theirs} == {"up", "down"} else "regenerate"
        if verdict == "up" and theirs in ("down", "regenerate"):
            implied.append((kind, response_id, other))
        elif verdict != "up" and theirs == "up":
            implied.append((kind, other, response_id))
    return implied


def _stale_pairs(response_id: str, others: list[str], implied_now: set[str]) -> list[str]:
    """The ids of every pair verdicts could imply between this answer and the others to its prompt
    (either side, either kind) that its latest verdict does not imply."""
    possible = [
        pair_id(kind, *sides)
        for other in others
        for kind in VERDICT_PAIR_KINDS
        for sides in ((response_id, other), (other, response_id))
    ]
    return [p for p in possible if p not in implied_now]


def _now() -> str:
    return datetime.now(UTC).isoformat()
