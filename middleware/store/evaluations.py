"""Online evaluation runs and their trials in Redis (keys from middleware.store.keys).

    pm:evaluations:<t>                      sorted set: run ids of the tenant by creation time
    pm:evaluations:<t>:<id>                 the run (JSON): users, model, name, order seed, ...
    pm:evaluations:<t>:<id>:trials          list of trial ids in creation order
    pm:evaluations:<t>:<id>:trial:<tid>     hash: `data` (JSON: answers by condition, the order shown,
                                            persona versions, ...) and, once chosen, `choice` (JSON)
    pm:evaluations:<t>:<id>:positions       hash: user -> trials given (drives the balanced order)

The tenant is part of every key, so another tenant's run or trial is simply not found. A choice is
written with HSETNX: the first one wins and a second is refused (409). A trial too (its `data`), and
its id joins the run's list only when absent, so a retried creation (an idempotency key gives the
same trial id) stores it once. Every operation touches one key or is a plain pipeline, so the layout
works on Redis Cluster too.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from middleware.store import keys
from middleware.store.guard import fail_closed

LIST_BATCH = 500

# KEYS: a list. ARGV: a value. Append it unless the list holds it already; 1 when appended.
_APPEND_ONCE = """
if redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""


def _cmd(result: Any) -> Awaitable[Any]:
    """redis-py types hash and list commands as `Awaitable[T] | T`; on the asyncio client they await."""
    return cast(Awaitable[Any], result)


class EvaluationStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._append_once = redis.register_script(_APPEND_ONCE)

    # --- runs ---------------------------------------------------------------------------------------
    async def create_run(self, tenant: str, run: dict[str, Any]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.evaluation(tenant, run["id"]), orjson.dumps(run))
        pipe.zadd(keys.tenant_evaluations(tenant), {run["id"]: float(run["created"])})
        await fail_closed(pipe.execute())

    async def run(self, tenant: str, evaluation_id: str) -> dict[str, Any] | None:
        raw = await fail_closed(self._redis.get(keys.evaluation(tenant, evaluation_id)))
        return orjson.loads(raw) if raw else None

    async def run_ids(self, tenant: str) -> list[str]:
        raw = await fail_closed(self._redis.zrange(keys.tenant_evaluations(tenant), 0, -1))
        return [r.decode() for r in raw]

    async def next_position(self, tenant: str, evaluation_id: str, user: str) -> int:
        """0, 1, 2, ... for the user's successive trials in this run."""
        n = await fail_closed(
            _cmd(self._redis.hincrby(keys.evaluation_positions(tenant, evaluation_id), user, 1))
        )
        return int(n) - 1

    # --- trials -------------------------------------------------------------------------------------
    async def save_trial(self, tenant: str, evaluation_id: str, trial: dict[str, Any]) -> bool:
        """Store a new trial and list it; False when a trial with this id was stored already (it
        stays as it was, and is listed if an interrupted write had not listed it yet)."""
        key = keys.evaluation_trial(tenant, evaluation_id, trial["id"])
        created = await fail_closed(_cmd(self._redis.hsetnx(key, "data", orjson.dumps(trial).decode())))
        await self.list_trial(tenant, evaluation_id, trial["id"])
        return bool(created)

    async def list_trial(self, tenant: str, evaluation_id: str, trial_id: str) -> None:
        """Put the trial's id in the run's list unless it is there."""
        await fail_closed(
            self._append_once(keys=[keys.evaluation_trials(tenant, evaluation_id)], args=[trial_id])
        )

    async def trial(self, tenant: str, evaluation_id: str, trial_id: str) -> dict[str, Any] | None:
        """The trial with its `choice` (None while unchosen), or None when there is no such trial."""
        raw = await fail_closed(
            _cmd(self._redis.hgetall(keys.evaluation_trial(tenant, evaluation_id, trial_id)))
        )
        return _trial_of(raw)

    async def record_choice(
        self, tenant: str, evaluation_id: str, trial_id: str, choice: dict[str, Any]
    ) -> bool:
        """Store the choice unless one is there already; True when this call stored it."""
        key = keys.evaluation_trial(tenant, evaluation_id, trial_id)
        return bool(await fail_closed(_cmd(self._redis.hsetnx(key, "choice", orjson.dumps(choice).decode()))))

    async def trials(self, tenant: str, evaluation_id: str) -> list[dict[str, Any]]:
        """Every trial of the run in creation order, each with its choice (or None)."""
        ids = await fail_closed(
            _cmd(self._redis.lrange(keys.evaluation_trials(tenant, evaluation_id), 0, -1))
        )
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), LIST_BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for trial_id in ids[start : start + LIST_BATCH]:
                pipe.hgetall(keys.evaluation_trial(tenant, evaluation_id, trial_id.decode()))
            for raw in await fail_closed(pipe.execute()):
                trial = _trial_of(raw)
                if trial is not None:
                    out.append(trial)
        return out

    async def user_trials(self, tenant: str, user: str) -> list[dict[str, Any]]:
        """Every trial of the user in every run of the tenant (for export)."""
        found = []
        for evaluation_id in await self.run_ids(tenant):
            found += [
                {"evaluation_id": evaluation_id, **t}
                for t in await self.trials(tenant, evaluation_id)
                if t["user"] == user
            ]
        return found

    async def forget_user(self, tenant: str, user: str) -> dict[str, int]:
        """Remove a user from every run of the tenant: their trials are deleted, their name leaves the
        run's user list and counters, and trials of others that used their persona as the `other`
        answer keep the answer but no longer say whose persona it was."""
        deleted = redacted = runs_changed = 0
        for evaluation_id in await self.run_ids(tenant):
            run = await self.run(tenant, evaluation_id)
            if run is None:
                continue
            changed = False
            for trial in await self.trials(tenant, evaluation_id):
                key = keys.evaluation_trial(tenant, evaluation_id, trial["id"])
                if trial["user"] == user:
                    pipe = self._redis.pipeline(transaction=False)
                    pipe.lrem(keys.evaluation_trials(tenant, evaluation_id), 0, trial["id"])
                    pipe.delete(key)
                    await fail_closed(pipe.execute())
                    deleted += 1
                    changed = True
                elif trial.get("other_user") == user:
                    trial.pop("choice", None)
                    trial["other_user"] = None
                    trial["answers"]["other"].update(persona_user=None, persona_version_id=None)
                    trial["other_user_forgotten"] = True
                    await fail_closed(_cmd(self._redis.hset(key, "data", orjson.dumps(trial).decode())))
                    redacted += 1
                    changed = True
            if user in run.get("users", []):
                run["users"] = [u for u in run["users"] if u != user]
                run.get("persona_versions_at_creation", {}).pop(user, None)
                await fail_closed(self._redis.set(keys.evaluation(tenant, evaluation_id), orjson.dumps(run)))
                changed = True
            await fail_closed(_cmd(self._redis.hdel(keys.evaluation_positions(tenant, evaluation_id), user)))
            runs_changed += changed
        return {
            "evaluation_trials_deleted": deleted,
            "evaluation_trials_redacted": redacted,
            "evaluation_runs": runs_changed,
        }


def _trial_of(raw: dict[bytes, bytes]) -> dict[str, Any] | None:
    if not raw or b"data" not in raw:
        return None
    trial: dict[str, Any] = orjson.loads(raw[b"data"])
    trial["choice"] = orjson.loads(raw[b"choice"]) if b"choice" in raw else None
    return trial
