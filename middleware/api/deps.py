"""Dependencies shared by the routers: the app's services, the calling tenant, the admin tenant."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Path, Request

from middleware.errors import InvalidJSON, InvalidRequest
from middleware.identity import (
    USER_HEADER,
    USER_ID_RE,
    tenant_for_admin,
    tenant_for_app_key,
    validate_user_id,
)
from middleware.services import Services

UserPath = Annotated[str, Path(pattern=USER_ID_RE.pattern, description="end-user id")]


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def app_tenant(request: Request, services: ServicesDep) -> str:
    return tenant_for_app_key(request.headers, services.settings)


async def admin_tenant(request: Request, services: ServicesDep) -> str:
    return tenant_for_admin(request.headers, services.settings)


AppTenant = Annotated[str, Depends(app_tenant)]
AdminTenant = Annotated[str, Depends(admin_tenant)]


def parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None


def caller_user(request: Request, body_user: str | None, *, required: bool) -> str | None:
    """The end user of an app-facing call: the X-Persona-User header, else the body's `user`."""
    header = request.headers.get(USER_HEADER)
    if header:
        return validate_user_id(header, param=USER_HEADER)
    if body_user:
        return validate_user_id(body_user)
    if required:
        raise InvalidRequest(
            "an end-user id is required: 'user' in the body or the X-Persona-User header",
            param="user",
            code="missing_user",
        )
    return None
