"""Operator routes for segments, users' assignments to them, and the tenant's default persona.

A segment is a named group of a tenant's users (`PUT /admin/segments/{segment}`) with an optional
persona: written by hand, or induced from its members' preference pairs
(`POST /admin/segments/{segment}/refresh`, a job). A user belongs to the segment the chat request names
(`X-Persona-Segment` or `metadata.segment`), else to the one assigned here
(`PUT /admin/users/{user}/segment`). The tenant's default persona (`PUT /admin/tenant/persona`) is
what users with no persona of their own and no segment persona get. All need the admin key; the
tenant is named by X-Persona-Tenant.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from middleware.api.deps import AdminTenant, ServicesDep, UserPath
from middleware.api.responses import JSONBytes, job_accepted
from middleware.api.schemas import PersonaVersionPublic, RollbackIn
from middleware.errors import NotEnoughData, NotFound
from middleware.identity import validate_segment
from middleware.induction.provenance import admin_provenance
from middleware.models import Persona
from middleware.services import Services
from middleware.store import keys
from middleware.store.personas import PersonaStore

router = APIRouter(tags=["segments"])


def _segment_from_path(segment: Annotated[str, Path(description="segment name")]) -> str:
    return validate_segment(segment)


SegmentName = Annotated[str, Depends(_segment_from_path)]


class SegmentPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field(default="", max_length=2_000)
    persona: str | None = Field(
        default=None, min_length=1, max_length=20_000, description="a hand-written persona for the segment"
    )


class SharedPersonaPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=20_000)


class SegmentRefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, max_length=200, description="LLM used for induction")


class AssignmentPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segment: str = Field(min_length=1, max_length=64)


def persona_view(persona: Persona | None) -> dict[str, Any] | None:
    if persona is None:
        return None
    return {
        "text": persona.text,
        "version": persona.version,
        "version_id": persona.version_id,
        "provenance": persona.provenance,
        "created_at": persona.created_at,
    }


async def _versions(personas: PersonaStore, line: keys.PersonaLine) -> list[PersonaVersionPublic]:
    current = await personas.line_current(line)
    current_id = current.version_id if current else None
    return [
        PersonaVersionPublic(
            version=p.version,
            version_id=p.version_id,
            created_at=p.created_at,
            current=p.version_id == current_id,
            text_chars=len(p.text),
            exemplar_count=len(p.exemplars),
            provenance=p.provenance,
            adapter=None,
        )
        for p in await personas.line_versions(line)
    ]


async def _save_if_new(personas: PersonaStore, line: keys.PersonaLine, text: str) -> Persona:
    """A new version, unless the current one has this text (a retry adds no second version)."""
    current = await personas.line_current(line)
    if current is not None and current.text == text and not current.exemplars:
        return current
    return await personas.save_line(line, text, [], provenance=admin_provenance())


# --- segments ---------------------------------------------------------------------------------------
@router.get("/admin/segments")
async def list_segments(tenant: AdminTenant, services: ServicesDep) -> list[dict[str, Any]]:
    counts = await services.segments.member_counts(tenant)
    found = await services.segments.all(tenant)
    out = []
    for record in found:
        persona = await services.personas.line_current(keys.segment_line(tenant, record["name"]))
        out.append(
            {
                **record,
                "members": counts.get(record["name"], 0),
                "persona_version": persona and persona.version,
            }
        )
    return out


@router.put("/admin/segments/{segment}")
async def put_segment(
    segment: SegmentName, body: SegmentPut, tenant: AdminTenant, services: ServicesDep
) -> dict[str, Any]:
    """Create or update a segment; with `persona`, a new version of its persona (the same text as
    the current version is that version)."""
    record = await services.segments.put(tenant, segment, body.description)
    line = keys.segment_line(tenant, segment)
    persona = (
        await _save_if_new(services.personas, line, body.persona)
        if body.persona is not None
        else await services.personas.line_current(line)
    )
    return {**record, "persona": persona_view(persona)}


@router.get("/admin/segments/{segment}")
async def get_segment(segment: SegmentName, tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    record = await services.segments.get(tenant, segment)
    if record is None:
        raise NotFound(f"segment {segment!r} does not exist", param="segment")
    persona = await services.personas.line_current(keys.segment_line(tenant, segment))
    members = await services.segments.members(tenant, segment)
    return {**record, "members": members, "persona": persona_view(persona)}


@router.delete("/admin/segments/{segment}")
async def delete_segment(segment: SegmentName, tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    """The segment, every version of its persona, and its members' assignments."""
    if not await services.segments.delete(tenant, segment):
        raise NotFound(f"segment {segment!r} does not exist", param="segment")
    return {"segment": segment, "deleted": True}


@router.get("/admin/segments/{segment}/export")
async def export_segment(segment: SegmentName, tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    """Everything stored for the segment: its record, its members, and every version of its persona
    with text and provenance (which members and pairs each version was induced from)."""
    record = await services.segments.get(tenant, segment)
    if record is None:
        raise NotFound(f"segment {segment!r} does not exist", param="segment")
    line = keys.segment_line(tenant, segment)
    current = await services.personas.line_current(line)
    return {
        **record,
        "members": await services.segments.members(tenant, segment),
        "current_version": current.version if current is not None else None,
        "versions": [persona_view(p) for p in await services.personas.line_versions(line)],
    }


async def _existing(services: Services, tenant: str, segment: str) -> None:
    if await services.segments.get(tenant, segment) is None:
        raise NotFound(f"segment {segment!r} does not exist", param="segment")


@router.get("/admin/segments/{segment}/persona/versions")
async def segment_versions(
    segment: SegmentName, tenant: AdminTenant, services: ServicesDep
) -> list[PersonaVersionPublic]:
    await _existing(services, tenant, segment)
    return await _versions(services.personas, keys.segment_line(tenant, segment))


@router.post("/admin/segments/{segment}/persona/rollback")
async def segment_rollback(
    segment: SegmentName, body: RollbackIn, tenant: AdminTenant, services: ServicesDep
) -> dict[str, Any]:
    await _existing(services, tenant, segment)
    persona = await services.personas.line_rollback(
        keys.segment_line(tenant, segment), body.version, owner="segment"
    )
    return {"segment": segment, "persona": persona_view(persona)}


@router.delete("/admin/segments/{segment}/persona")
async def segment_persona_off(
    segment: SegmentName, tenant: AdminTenant, services: ServicesDep
) -> dict[str, Any]:
    """The segment's members get no segment persona; its versions stay for rollback."""
    if not await services.personas.line_clear(keys.segment_line(tenant, segment)):
        raise NotFound(f"segment {segment!r} has no persona", param="segment")
    return {"segment": segment, "persona": None}


@router.post("/admin/segments/{segment}/refresh", status_code=202)
async def refresh_segment(
    segment: SegmentName,
    tenant: AdminTenant,
    services: ServicesDep,
    body: Annotated[SegmentRefreshIn | None, Body()] = None,
) -> JSONBytes:
    """Queue the induction of the segment's persona from its members' pooled pairs; 202 with the
    job id (a pending refresh of the segment is reused)."""
    await _existing(services, tenant, segment)
    if not await services.segments.members(tenant, segment):
        raise NotEnoughData(f"not enough data: segment {segment!r} has no members", param="segment")
    job_id, created = await services.jobs.enqueue_segment_refresh(
        tenant, segment, model=body.model if body else None
    )
    return job_accepted(job_id, created)


# --- a user's assignment ----------------------------------------------------------------------------
@router.put("/admin/users/{user}/segment")
async def assign(
    user: UserPath, body: AssignmentPut, tenant: AdminTenant, services: ServicesDep
) -> dict[str, Any]:
    segment = validate_segment(body.segment)
    await _existing(services, tenant, segment)
    await services.segments.assign(tenant, user, segment)
    return {"user": user, "segment": segment}


@router.get("/admin/users/{user}/segment")
async def assigned(user: UserPath, tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    segment = await services.segments.assigned(tenant, user)
    if segment is None:
        raise NotFound(f"user {user!r} is assigned to no segment")
    return {"user": user, "segment": segment}


@router.delete("/admin/users/{user}/segment")
async def unassign(user: UserPath, tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    if not await services.segments.unassign(tenant, user):
        raise NotFound(f"user {user!r} is assigned to no segment")
    return {"user": user, "segment": None}


# --- the tenant's default persona -------------------------------------------------------------------
@router.put("/admin/tenant/persona")
async def put_tenant_persona(
    body: SharedPersonaPut, tenant: AdminTenant, services: ServicesDep
) -> dict[str, Any]:
    persona = await _save_if_new(services.personas, keys.tenant_default_line(tenant), body.text)
    return {"tenant": tenant, "persona": persona_view(persona)}


@router.get("/admin/tenant/persona")
async def get_tenant_persona(tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    persona = await services.personas.line_current(keys.tenant_default_line(tenant))
    if persona is None:
        raise NotFound("the tenant has no default persona")
    return {"tenant": tenant, "persona": persona_view(persona)}


@router.delete("/admin/tenant/persona")
async def delete_tenant_persona(tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    """Switch the default off; its versions stay for rollback."""
    if not await services.personas.line_clear(keys.tenant_default_line(tenant)):
        raise NotFound("the tenant has no default persona")
    return {"tenant": tenant, "persona": None}


@router.get("/admin/tenant/persona/versions")
async def tenant_persona_versions(tenant: AdminTenant, services: ServicesDep) -> list[PersonaVersionPublic]:
    return await _versions(services.personas, keys.tenant_default_line(tenant))


@router.post("/admin/tenant/persona/rollback")
async def tenant_persona_rollback(
    body: RollbackIn, tenant: AdminTenant, services: ServicesDep
) -> dict[str, Any]:
    persona = await services.personas.line_rollback(
        keys.tenant_default_line(tenant), body.version, owner="tenant"
    )
    return {"tenant": tenant, "persona": persona_view(persona)}
