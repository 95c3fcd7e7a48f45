"""After a persona refresh, the worker trains the user's `lora` adapter and stores it beside the new
persona version (`keys.adapter(tenant, user, version)`).

The persona is already stored when this runs, so nothing here can fail the refresh: a missing extra,
a missing head or a training error becomes a warning in the job result. The rerank path reads the
adapter of the persona version it personalises with, so a rollback to version N uses adapter vN.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from middleware.adapter_format import safetensors_metadata
from middleware.config import Settings
from middleware.errors import PersonaError
from middleware.induction.queue import JobCancelled, JobQueue
from middleware.models import PreferencePair
from middleware.store.personas import PersonaStore
from middleware.store.preferences import PreferenceStore
from middleware.store.users import UserIndex

log = logging.getLogger("middleware.jobs")
STOP_CHECK_S = 0.5  # how often a running training looks for a cancel (and reports its progress)
STOP_GRACE_S = 30.0  # how long a cancelled training may take to reach its next step and stop


class ModelHolder:
    """One `LoraRewardModel` per worker process, built on first use; reloads a newer head file."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: Any = None
        self.head_mtime: float | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        from middleware.rerank.lora import model_from_settings

        path = self.settings.lora_head_path
        assert path is not None  # adapter_wanted said yes
        mtime = os.stat(path).st_mtime
        async with self._lock:
            if self.model is None:
                # the worker trains and stores adapters; it never needs to cache them
                self.model = await asyncio.to_thread(model_from_settings, self.settings, cache_size=1)
                self.head_mtime = mtime
            elif mtime != self.head_mtime:
                await asyncio.to_thread(self.model.load, path)
                self.head_mtime = mtime
        return self.model


def adapter_wanted(settings: Settings, *, asked: bool = False) -> str | None:
    """None when the worker should train adapters, else why not (a warning for the job result).
    `asked`: an operator asked for this adapter, so `lora_train_on_refresh` does not matter."""
    if not settings.lora_head_path:
        return "off" if not asked else "no global head is configured (PERSONA_LORA_HEAD_PATH)"
    if not settings.lora_train_on_refresh and not asked:
        return "off"  # the lora reranker is not set up: nothing to say
    if not os.path.exists(settings.lora_head_path):
        return f"the global head {settings.lora_head_path} does not exist (persona train-reward-head)"
    from middleware.rerank.lora import extra_available

    if not extra_available():
        return "the lora extra is not installed"
    return None


class AdapterTrainer:
    """Trains users' adapters and stores each beside its persona version (the worker's; the model is
    built on first use, once per process)."""

    def __init__(self, settings: Settings, personas: PersonaStore, preferences: PreferenceStore) -> None:
        self.settings = settings
        self._personas = personas
        self._preferences = preferences
        self._model = ModelHolder(settings)

    async def after_refresh(
        self, tenant: str, user: str, result: dict[str, Any], *, pairs: list[PreferencePair] | None = None
    ) -> dict[str, Any]:
        """Train and store the adapter for the persona version in `result` (on `pairs`: the refresh's
        own read of the user's pairs, else read here); returns what goes into the job result:
        {"adapter": facts} or {"warnings": [...]} (or nothing when training is off)."""
        why_not = adapter_wanted(self.settings)
        if why_not == "off":
            return {}
        if why_not is not None:
            return {"warnings": [f"no lora adapter trained: {why_not}"]}
        try:
            version = int(result["version"])
            return {"adapter": await self.train_and_store(tenant, user, version, result, pairs=pairs)}
        except Exception as exc:  # the persona is stored; the adapter is a best effort
            log.warning("lora adapter training failed for %s/%s: %s", tenant, user, exc)
            return {"warnings": [f"lora adapter training failed: {type(exc).__name__}: {exc}"]}

    async def train_and_store(
        self,
        tenant: str,
        user: str,
        version: int,
        result: dict[str, Any],
        *,
        pairs: list[PreferencePair] | None = None,
        stopped: Callable[[], Awaitable[bool]] | None = None,
        progress: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Train the adapter (in a thread) on `pairs` (default: the user's pairs, read here) and
        store it beside persona `version`.

        With `stopped`, a stop seen while training tells the training thread to stop at its next step
        (`train_user(stop=)`), waits for it (at most `STOP_GRACE_S`) and raises `JobCancelled`;
        nothing is stored. `progress` hears {"stage": "adapter", "done", "total"} (training steps)."""
        model = await self._model.get()
        if pairs is None:
            pairs = await self._preferences.pairs(tenant, user)
        extra = {
            "tenant": tenant,
            "persona_version": str(version),
            "persona_version_id": str(result.get("version_id") or ""),
        }
        stop = threading.Event()
        steps = {"done": 0, "total": 0}  # written by the training thread, read here

        def step(done: int, total: int) -> None:
            steps.update(done=done, total=total)

        started = time.perf_counter()
        training = asyncio.ensure_future(
            asyncio.to_thread(
                model.train_user, user, pairs, cache=False, extra=extra, stop=stop.is_set, progress=step
            )
        )
        reported: dict[str, int] = {}
        while not training.done():
            await asyncio.wait([training], timeout=STOP_CHECK_S)
            if stopped is not None and await stopped():
                stop.set()
                await asyncio.wait([training], timeout=STOP_GRACE_S)
                if not training.done():
                    log.warning("a cancelled adapter training of %s/%s has not stopped yet", tenant, user)
                training.add_done_callback(lambda task: task.cancelled() or task.exception())
                raise JobCancelled()
            if progress is not None and steps != reported and not training.done():
                reported = dict(steps)
                await progress({"stage": "adapter", **reported})
        blob: bytes = await training
        seconds = time.perf_counter() - started
        if stopped is not None and await stopped():
            raise JobCancelled()
        stored = await self._personas.save_adapter(tenant, user, version, blob)
        meta = safetensors_metadata(blob)
        return {
            "stored": stored,
            "key_version": version,
            "bytes": len(blob),
            "strength": meta.get("strength"),
            "head_id": meta.get("head_id"),
            "pairs": len(pairs),
            "implicit_pairs": sum(1 for p in pairs if p.source == "implicit"),
            "seconds": round(seconds, 3),
        }


async def enqueue_adapter_training(
    settings: Settings, users_index: UserIndex, queue: JobQueue, tenant: str, users: list[str] | None = None
) -> dict[str, Any]:
    """Queue adapter training for the given users, or every user of the tenant, who has a persona and
    preference pairs (after `persona train-reward-head`, every stored adapter belongs to the old head).
    Returns counts and the job ids."""
    why_not = adapter_wanted(settings, asked=True)
    if why_not is not None:
        raise PersonaError(
            f"no lora adapter can be trained: {why_not}", code="lora_unavailable", status_code=503
        )
    if users is None:
        users = await users_index.members(tenant)
    summary: dict[str, Any] = {
        "tenant": tenant,
        "queued": 0,
        "deduplicated": 0,
        "no_persona": [],
        "no_preferences": [],
    }
    jobs: dict[str, str] = {}
    for user, (has_persona, n_records) in zip(
        users, await users_index.persona_and_preferences(tenant, users), strict=True
    ):
        if not has_persona:
            summary["no_persona"].append(user)
        elif not n_records:
            summary["no_preferences"].append(user)
        else:
            job_id, created = await queue.enqueue_adapter_training(tenant, user, reason="bulk")
            summary["queued" if created else "deduplicated"] += 1
            jobs[user] = job_id
    return {**summary, "jobs": jobs}
