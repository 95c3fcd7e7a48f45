"""`persona induce USER`: the same pipeline as the worker, run in the foreground with progress."""

from __future__ import annotations

import sys
from typing import Any

from middleware.config import Settings
from middleware.errors import NotEnoughData, PersonaError
from middleware.identity import validate_user_id
from middleware.induction.contexts import induce_contexts
from middleware.services import build_services


def print_progress(event: dict[str, Any]) -> None:
    stage = event.get("stage", "?")
    if "total" in event:
        line = f"{stage}: {event.get('done')}/{event.get('total')}"
    else:
        line = stage + "".join(f" {k}={v}" for k, v in event.items() if k != "stage")
    print(line, file=sys.stderr, flush=True)


async def run_induce(
    settings: Settings, *, tenant: str, user: str, model: str | None = None
) -> dict[str, Any]:
    """Induce and store a persona for one user now; returns a summary (or why nothing changed)."""
    validate_user_id(user)
    services = build_services(settings)
    try:
        pairs = await services.induction.read_pairs(tenant, user)  # once, for both steps
        result = await services.induction.induce(
            tenant, user, pairs=pairs, model=model, progress=print_progress
        )
        contexts = await induce_contexts(
            services.induction, tenant, user, pairs=pairs.pairs, model=model, progress=print_progress
        )
        return {**result, **contexts}
    except NotEnoughData as exc:
        return {"status": "not_enough_data", "code": exc.code, "message": exc.message}
    except PersonaError as exc:
        return {"status": "failed", "code": exc.code, "message": exc.message}
    finally:
        await services.close()
