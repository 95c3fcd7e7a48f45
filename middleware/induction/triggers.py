"""Automatic refresh right after new judgements land (the worker's periodic scan is the backstop)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from middleware.config import Settings
from middleware.errors import PersonaError
from middleware.induction.jobs import maybe_auto_refresh
from middleware.induction.queue import JobQueue
from middleware.store.preferences import PreferenceStore

log = logging.getLogger("middleware.induction")


async def refresh_if_due(
    settings: Settings, preferences: PreferenceStore, queue: JobQueue, tenant: str, users: Iterable[str]
) -> None:
    """Enqueue a refresh for each user now past `auto_refresh_after` new pairs.

    The write that called this already succeeded, so a queue problem is logged, never raised.
    """
    if settings.auto_refresh_after <= 0:
        return
    for user in sorted(set(users)):
        try:
            await maybe_auto_refresh(settings, preferences, queue, tenant, user)
        except PersonaError as exc:
            log.warning("automatic refresh for a user could not be enqueued: %s", exc)
