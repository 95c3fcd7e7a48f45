"""Operator routes for personas: read, write, switch off, list versions, roll back; and the `lora`
adapter stored beside a persona version. The user's context personas (README "Contexts") are shown
beside the general one and take the same operations with a `context` named.

All need the admin key; the tenant is named by the X-Persona-Tenant header.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import ValidationError

from middleware.adapter_format import adapter_facts
from middleware.api.deps import AdminTenant, ServicesDep, UserPath
from middleware.api.responses import JSONBytes, job_accepted
from middleware.api.schemas import (
    AdapterOfVersion,
    AdapterPublic,
    ContextPersonaPublic,
    PersonaPublic,
    PersonaPut,
    PersonaVersionPublic,
    RollbackIn,
)
from middleware.errors import InvalidRequest, NotEnoughData, NotFound
from middleware.induction.adapters import enqueue_adapter_training
from middleware.induction.provenance import admin_provenance
from middleware.models import PreferencePair
from middleware.personalize.contexts import RouterSpec, valid_tag
from middleware.services import Services

router = APIRouter(prefix="/admin/users", tags=["admin"])


@router.get("/{user}/persona")
async def get_persona(user: UserPath, tenant: AdminTenant, services: ServicesDep) -> PersonaPublic:
    """The current general persona, and the current persona of each context (`contexts`)."""
    persona = await services.personas.get(tenant, user)
    if persona is None:
        raise NotFound(f"user {user!r} has no persona")
    return PersonaPublic.of(user, persona, await _contexts(services, tenant, user))


async def _contexts(services: Services, tenant: str, user: str) -> list[ContextPersonaPublic]:
    current = await services.contexts.current(tenant, user)
    if not current:
        return []
    routed = await _routed(services, tenant, user)
    return [ContextPersonaPublic.of(name, p, routed=name in routed) for name, p in current.items()]


async def _routed(services: Services, tenant: str, user: str) -> set[str]:
    """The contexts the router has a centroid for."""
    blob = await services.contexts.router_blob(tenant, user)
    try:
        return {c.name for c in RouterSpec.model_validate_json(blob).contexts} if blob else set()
    except ValidationError:
        return set()


def _context(name: str | None) -> str | None:
    if name is not None and not valid_tag(name):
        raise InvalidRequest(
            "a context is 1-64 letters, digits, '.', '_' or '-' (and not 'general')", param="context"
        )
    return name


@router.put("/{user}/persona")
async def put_persona(
    user: UserPath, body: PersonaPut, tenant: AdminTenant, services: ServicesDep
) -> PersonaPublic | ContextPersonaPublic:
    """Store a new persona version; the same text and exemplars as the current version are that
    version (so a retry after a 503 adds no second version). With `context`: a new version of that
    context's persona."""
    exemplars = [e.to_pair(user) for e in body.exemplars]
    context = _context(body.context)
    if context is not None:
        found = (await services.contexts.current(tenant, user)).get(context)
        if found is None or found.text != body.text or _shown(found.exemplars) != _shown(exemplars):
            found = await services.contexts.save(
                tenant, user, context, body.text, exemplars, provenance=admin_provenance()
            )
        return ContextPersonaPublic.of(
            context, found, routed=context in await _routed(services, tenant, user)
        )
    current = await services.personas.get(tenant, user)
    if current is not None and current.text == body.text and _shown(current.exemplars) == _shown(exemplars):
        return PersonaPublic.of(user, current)
    persona = await services.personas.save(tenant, user, body.text, exemplars, provenance=admin_provenance())
    return PersonaPublic.of(user, persona)


def _shown(pairs: list[PreferencePair]) -> list[dict[str, object]]:
    return [p.model_dump(mode="json", include={"context", "chosen", "rejected", "rationale"}) for p in pairs]


@router.delete("/{user}/persona")
async def delete_persona(
    user: UserPath,
    tenant: AdminTenant,
    services: ServicesDep,
    context: Annotated[str | None, Query(max_length=64, description="switch off this context only")] = None,
) -> dict[str, object]:
    """Switch personalization off for the user (or, with `context`, that context's persona: the
    general one answers for it). Stored versions stay and can be rolled back to."""
    if context is not None and _context(context):
        if not await services.contexts.clear(tenant, user, context):
            raise NotFound(f"user {user!r} has no persona for context {context!r}", param="context")
        return {"user": user, "context": context, "deleted": True}
    removed = await services.personas.clear_current(tenant, user)
    if not removed:
        raise NotFound(f"user {user!r} has no persona")
    return {"user": user, "deleted": True}


@router.get("/{user}/persona/versions")
async def list_versions(
    user: UserPath, tenant: AdminTenant, services: ServicesDep
) -> list[PersonaVersionPublic]:
    current = await services.personas.get(tenant, user)
    current_id = current.version_id if current else None
    versions = await services.personas.list_versions(tenant, user)
    blobs = await services.personas.adapters(tenant, user, [p.version for p in versions])
    adapters = {version: adapter_facts(blob) for version, blob in blobs.items()}
    return [
        PersonaVersionPublic(
            context=None,
            version=p.version,
            version_id=p.version_id,
            created_at=p.created_at,
            current=p.version_id == current_id,
            text_chars=len(p.text),
            exemplar_count=len(p.exemplars),
            provenance=p.provenance,
            adapter=AdapterPublic.model_validate(adapters[p.version]) if p.version in adapters else None,
        )
        for p in versions
    ] + await _context_versions(services, tenant, user)


async def _context_versions(services: Services, tenant: str, user: str) -> list[PersonaVersionPublic]:
    """Every version of every context line (after the general ones), `current` per context."""
    current = {name: p.version_id for name, p in (await services.contexts.current(tenant, user)).items()}
    listed = []
    for name in await services.contexts.names(tenant, user):
        for p in await services.contexts.versions(tenant, user, name):
            listed.append(
                PersonaVersionPublic(
                    context=name,
                    version=p.version,
                    version_id=p.version_id,
                    created_at=p.created_at,
                    current=current.get(name) == p.version_id,
                    text_chars=len(p.text),
                    exemplar_count=len(p.exemplars),
                    provenance=p.provenance,
                    adapter=None,
                )
            )
    return listed


@router.get("/{user}/adapter")
async def get_adapter(
    user: UserPath,
    tenant: AdminTenant,
    services: ServicesDep,
    version: Annotated[
        int | None, Query(ge=1, description="persona version (default: the current one)")
    ] = None,
) -> AdapterOfVersion:
    """The `lora` adapter trained beside a persona version: its size, head and training facts."""
    if version is None:
        current = await services.personas.get(tenant, user)
        if current is None:
            raise NotFound(f"user {user!r} has no persona")
        version = current.version
    blob = (await services.personas.adapters(tenant, user, [version])).get(version)
    if blob is None:
        raise NotFound(f"persona version {version} of user {user!r} has no lora adapter", param="version")
    facts = adapter_facts(blob)
    return AdapterOfVersion.model_validate({**facts, "user": user, "persona_version": version})


@router.post("/{user}/persona/rollback")
async def rollback(
    user: UserPath, body: RollbackIn, tenant: AdminTenant, services: ServicesDep
) -> PersonaPublic | ContextPersonaPublic:
    """Make a stored version current again: of the general persona, or of `context`'s line."""
    context = _context(body.context)
    if context is not None:
        persona = await services.contexts.rollback(tenant, user, context, body.version)
        return ContextPersonaPublic.of(
            context, persona, routed=context in await _routed(services, tenant, user)
        )
    return PersonaPublic.of(user, await services.personas.rollback(tenant, user, body.version))


@router.post("/{user}/adapter/train", status_code=202)
async def train_adapter(user: UserPath, tenant: AdminTenant, services: ServicesDep) -> JSONBytes:
    """Queue training of the `lora` adapter for the user's current persona version, without a new
    persona (after `persona train-reward-head`, say); 202 with the job id. A pending refresh of the
    user, which trains the adapter too, is reused."""
    outcome = await enqueue_adapter_training(services.settings, services.users, services.jobs, tenant, [user])
    if outcome["no_persona"]:
        raise NotFound(f"user {user!r} has no persona; an adapter is trained beside a persona version")
    if outcome["no_preferences"]:
        raise NotEnoughData(f"user {user!r} has no preference pairs to train an adapter on", param="user")
    return job_accepted(outcome["jobs"][user], created=outcome["queued"] == 1)
