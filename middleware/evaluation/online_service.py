"""Online own / other / baseline evaluation runs (docs/METHOD.md §4): create, trial, choose, report.

A run names a tenant, a set of users (each with a persona) and a model. For each prompt a user
enters, a trial produces three answers at once (asyncio.gather): with the user's own persona, with
the persona of another user of the run drawn at random (recorded, with its version), and with no
persona. They are shown under the labels A, B, C in a balanced order (`online.balanced_order`); the
mapping label -> condition is stored with the trial and never returned to the app or the user.

Blindness: the three answers are returned together only once all are ready (never in the order they
finish, which would tell the baseline apart by speed), with no latency, persona or condition data.
A choice is "A" | "B" | "C" | "tie" | "skip" plus an optional rationale; it is recorded once (a
second gets 409), with the condition it maps to, the time it took and the order that was shown.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from middleware.candidates.generate import Candidate, generate_all
from middleware.candidates.variants import Plan
from middleware.errors import (
    Conflict,
    NotEnoughData,
    NotFound,
    PermissionDenied,
    ValidationFailed,
)
from middleware.evaluation import online
from middleware.idempotency import keyed_id
from middleware.models import Persona
from middleware.personalize.service import Personalizer
from middleware.quotas.service import Quotas
from middleware.store.evaluations import EvaluationStore
from middleware.store.personas import PersonaStore
from middleware.upstream import UpstreamRouter

CHOICES = ("A", "B", "C", "tie", "skip")
_random = secrets.SystemRandom()


def new_evaluation_id() -> str:
    return f"ev_{uuid.uuid4().hex}"


def new_trial_id() -> str:
    return f"trl_{uuid.uuid4().hex}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def public_run(run: dict[str, Any]) -> dict[str, Any]:
    """The run as the admin API shows it (the order seed stays private)."""
    return {k: v for k, v in run.items() if k != "order_seed"}


def _answer(candidate: Candidate) -> dict[str, Any]:
    """A trial's answer as stored: its text, how it finished, its usage and latency."""
    shown = candidate.to_dict()
    return {k: shown[k] for k in ("content", "finish_reason", "usage", "latency_ms")}


def public_trial(trial: dict[str, Any]) -> dict[str, Any]:
    """What the app and the user see of a trial: three labelled answers, nothing about conditions."""
    return {
        "id": trial["id"],
        "object": "evaluation.trial",
        "evaluation_id": trial["evaluation_id"],
        "user": trial["user"],
        "created": trial["created"],
        "answers": [
            {"label": label, "content": trial["answers"][condition]["content"]}
            for label, condition in zip(online.LABELS, trial["order"], strict=True)
        ],
    }


class EvaluationService:
    def __init__(
        self,
        store: EvaluationStore,
        personas: PersonaStore,
        personalizer: Personalizer,
        upstreams: UpstreamRouter,
        quotas: Quotas | None = None,
    ) -> None:
        self.store = store
        self._quotas = quotas
        self._persona_store = personas
        self._personalizer = personalizer
        self._upstreams = upstreams

    # --- runs ---------------------------------------------------------------------------------------
    async def create_run(
        self, tenant: str, *, users: list[str], model: str, name: str | None = None
    ) -> dict[str, Any]:
        distinct = list(dict.fromkeys(users))
        if len(distinct) != len(users):
            raise ValidationFailed("the users of a run must be distinct", param="users")
        if len(distinct) < 2:
            raise ValidationFailed(
                "a run needs at least 2 users (the 'other' persona comes from another user of the run)",
                param="users",
            )
        personas = await self._personas(tenant, distinct)
        missing = [u for u in distinct if personas[u] is None]
        if missing:
            raise NotEnoughData(
                f"every user of a run needs a persona; none for: {', '.join(missing)}", param="users"
            )
        run = {
            "id": new_evaluation_id(),
            "object": "evaluation",
            "tenant": tenant,
            "name": name,
            "model": model,
            "users": distinct,
            "status": "open",
            "persona_versions_at_creation": {u: p.version for u, p in personas.items() if p},
            "created": int(time.time()),
            "created_at": _now(),
            "order_seed": secrets.token_hex(16),
        }
        await self.store.create_run(tenant, run)
        return public_run(run)

    async def run(self, tenant: str, evaluation_id: str) -> dict[str, Any]:
        run = await self.store.run(tenant, evaluation_id)
        if run is None:
            raise NotFound(f"evaluation {evaluation_id!r} not found", param="id")
        return run

    async def status(self, tenant: str, evaluation_id: str) -> dict[str, Any]:
        run = await self.run(tenant, evaluation_id)
        trials = await self.store.trials(tenant, evaluation_id)
        by_user: dict[str, dict[str, int]] = {
            u: {"trials": 0, "chosen": 0, "ties": 0, "skips": 0} for u in run["users"]
        }
        for trial in trials:
            row = by_user.setdefault(trial["user"], {"trials": 0, "chosen": 0, "ties": 0, "skips": 0})
            row["trials"] += 1
            choice = (trial.get("choice") or {}).get("choice")
            if choice in ("A", "B", "C"):
                row["chosen"] += 1
            elif choice == "tie":
                row["ties"] += 1
            elif choice == "skip":
                row["skips"] += 1
        return {
            **public_run(run),
            "trials": len(trials),
            "pending": sum(1 for t in trials if t.get("choice") is None),
            "progress": by_user,
        }

    async def member_view(self, tenant: str, evaluation_id: str, user: str) -> dict[str, Any]:
        """What a user of the run may see of it: its name, whether it is open, their own progress."""
        run = await self.run(tenant, evaluation_id)
        if user not in run["users"]:
            raise PermissionDenied(
                f"user {user!r} is not part of evaluation {evaluation_id!r}", code="user_not_in_evaluation"
            )
        mine = [t for t in await self.store.trials(tenant, evaluation_id) if t["user"] == user]
        return {
            "id": run["id"],
            "object": "evaluation",
            "name": run.get("name"),
            "status": run.get("status", "open"),
            "user": user,
            "trials": len(mine),
            "answered": sum(1 for t in mine if t.get("choice") is not None),
        }

    async def set_status(self, tenant: str, evaluation_id: str, status: str) -> dict[str, Any]:
        run = await self.run(tenant, evaluation_id)
        run["status"] = status
        run[f"{status}_at"] = _now()
        await self.store.create_run(tenant, run)
        return public_run(run)

    async def list_runs(self, tenant: str) -> list[dict[str, Any]]:
        runs = []
        for run_id in await self.store.run_ids(tenant):
            run = await self.store.run(tenant, run_id)
            if run is not None:
                runs.append(public_run(run))
        return runs

    async def _personas(self, tenant: str, users: list[str]) -> dict[str, Persona | None]:
        found = await asyncio.gather(*(self._persona_store.get(tenant, u) for u in users))
        return dict(zip(users, found, strict=True))

    # --- trials -------------------------------------------------------------------------------------
    async def create_trial(
        self,
        tenant: str,
        evaluation_id: str,
        *,
        user: str,
        messages: list[dict[str, Any]],
        extra: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> dict[str, Any]:
        """A new trial; with an idempotency key its id comes from the key (see `replay_trial`)."""
        run = await self.run(tenant, evaluation_id)
        if run.get("status", "open") != "open":
            raise Conflict(f"evaluation {evaluation_id!r} is closed", code="evaluation_closed")
        if user not in run["users"]:
            raise PermissionDenied(
                f"user {user!r} is not part of evaluation {evaluation_id!r}", code="user_not_in_evaluation"
            )
        personas = await self._personas(tenant, run["users"])
        own = personas[user]
        if own is None:
            raise NotEnoughData(f"user {user!r} has no persona any more", param="user")
        others = [u for u in run["users"] if u != user and personas[u] is not None]
        if not others:
            raise NotEnoughData("no other user of the run has a persona to compare with", param="user")
        other_user = _random.choice(others)
        other = personas[other_user]
        assert other is not None

        render = self._personalizer.render
        blocks = {"own": render(own), "other": render(other), "baseline": None}
        upstream, model_name = self._upstreams.route(run["model"])
        candidates = await generate_all(
            upstream,
            {**(extra or {}), "model": model_name},
            messages,
            [Plan(block=blocks[condition]) for condition in online.CONDITIONS],
            require_text=True,
        )
        if self._quotas is not None:  # every answer's tokens count, a failed trial's too
            usages = [c.completion.get("usage") for c in candidates if c.completion]
            await self._quotas.add_usage(tenant, *usages)
        for candidate in candidates:
            if candidate.error is not None:
                raise candidate.error
        answers = {
            condition: _answer(candidate)
            for condition, candidate in zip(online.CONDITIONS, candidates, strict=True)
        }
        for condition, persona_user, persona in (("own", user, own), ("other", other_user, other)):
            answers[condition].update(
                persona_user=persona_user,
                persona_version=persona.version,
                persona_version_id=persona.version_id,
            )
        answers["baseline"].update(persona_user=None, persona_version=None, persona_version_id=None)

        # The position is taken only once the answers exist, so failed trials leave no gap.
        position = await self.store.next_position(tenant, evaluation_id, user)
        order = online.balanced_order(run["order_seed"], user, position)
        trial = {
            "id": keyed_id("trl", idempotency_key, tenant, evaluation_id, user)
            if idempotency_key
            else new_trial_id(),
            "evaluation_id": evaluation_id,
            "tenant": tenant,
            "user": user,
            "model": run["model"],
            "upstream_model": model_name,
            "messages": messages,
            "extra": extra or {},
            "position": position,
            "order": list(order),
            "other_user": other_user,
            "answers": answers,
            "created": time.time(),
            "created_at": _now(),
            **({"request_hash": request_hash} if idempotency_key else {}),
        }
        if not await self.store.save_trial(tenant, evaluation_id, trial):
            # the same key, created concurrently: the first trial stored stands
            stored = await self.store.trial(tenant, evaluation_id, trial["id"])
            if stored is not None:
                return public_trial(stored)
        return public_trial(trial)

    async def replay_trial(
        self, tenant: str, evaluation_id: str, user: str, idempotency_key: str, request_hash: str
    ) -> dict[str, Any] | None:
        """The trial a creation with this key stored (as the app sees it), or None. A key first used
        for another request is a 409."""
        await self.run(tenant, evaluation_id)
        trial_id = keyed_id("trl", idempotency_key, tenant, evaluation_id, user)
        stored = await self.store.trial(tenant, evaluation_id, trial_id)
        if stored is None:
            return None
        if stored.get("request_hash") != request_hash:
            raise Conflict(
                "this idempotency key was used for another trial request", code="idempotency_key_reused"
            )
        await self.store.list_trial(tenant, evaluation_id, trial_id)  # an interrupted write may not have
        return public_trial(stored)

    async def choose(
        self,
        tenant: str,
        evaluation_id: str,
        trial_id: str,
        *,
        choice: str,
        rationale: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        if choice not in CHOICES:
            raise ValidationFailed(f"choice must be one of {', '.join(CHOICES)}", param="choice")
        trial = await self.store.trial(tenant, evaluation_id, trial_id)
        # Another user's trial is indistinguishable from a missing one.
        if trial is None or (user is not None and trial["user"] != user):
            raise NotFound(f"trial {trial_id!r} not found in evaluation {evaluation_id!r}", param="trial_id")
        if trial["choice"] is not None:
            raise Conflict(f"trial {trial_id!r} has already been answered", code="already_chosen")
        now = time.time()
        condition = None
        if choice in online.LABELS:
            condition = trial["order"][online.LABELS.index(choice)]
        record = {
            "choice": choice,
            "condition": condition,
            "rationale": rationale or None,
            "order": trial["order"],
            "chosen_at": _now(),
            "seconds_to_choose": round(now - float(trial["created"]), 3),
        }
        if not await self.store.record_choice(tenant, evaluation_id, trial_id, record):
            raise Conflict(f"trial {trial_id!r} has already been answered", code="already_chosen")
        return {
            "id": trial_id,
            "object": "evaluation.choice",
            "evaluation_id": evaluation_id,
            "user": trial["user"],
            "choice": choice,
            "rationale": rationale or None,
            "chosen_at": record["chosen_at"],
        }

    # --- analysis -----------------------------------------------------------------------------------
    async def trials(self, tenant: str, evaluation_id: str) -> list[dict[str, Any]]:
        await self.run(tenant, evaluation_id)
        return await self.store.trials(tenant, evaluation_id)

    async def report(self, tenant: str, evaluation_id: str, *, seed: int = 0) -> dict[str, Any]:
        run = await self.run(tenant, evaluation_id)
        trials = await self.store.trials(tenant, evaluation_id)
        return build_report(run, trials, seed=seed)


def outcome_of(trial: dict[str, Any]) -> online.Outcome:
    choice = trial.get("choice")
    picked: str | None = None
    if choice is not None:
        picked = choice["condition"] if choice["choice"] in online.LABELS else choice["choice"]
    return online.Outcome(
        user=trial["user"], order=tuple(trial["order"]), picked=picked, other_user=trial.get("other_user")
    )


def build_report(run: dict[str, Any], trials: list[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    stats = online.report([outcome_of(t) for t in trials], users=run["users"], seed=seed)
    return {
        "evaluation": {
            k: run.get(k) for k in ("id", "name", "model", "tenant", "users", "status", "created_at")
        },
        "generated_at": _now(),
        **stats,
    }
