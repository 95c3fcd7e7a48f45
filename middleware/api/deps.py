"""Dependencies shared by the routers: the app's services, the calling tenant, the admin tenant."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar
from urllib.parse import unquote

import orjson
from fastapi import Depends, Path, Request

from middleware.errors import InvalidJSON, InvalidRequest, ValidationFailed
from middleware.identity import (
    USER_HEADER,
    app_caller,
    bind_user,
    header_text,
    tenant_for_admin,
    validate_user_id,
)
from middleware.limits import PARSED_BODY
from middleware.services import Services


def _user_from_path(
    user: Annotated[str, Path(description="end-user id, URL-encoded (e.g. auth0%7C42, u%2F42)")],
) -> str:
    """The user segment arrives still percent-encoded (see api/paths.py): decode it once."""
    return validate_user_id(unquote(user), param="user")


UserPath = Annotated[str, Depends(_user_from_path)]


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def app_tenant(request: Request, services: ServicesDep) -> str:
    """The app key's tenant, or a user token's: then the call is bound to the token's user (a user
    in the path, the X-Persona-User header or the body that names anyone else is a 403)."""
    tenant, token_user = app_caller(request.headers, services.settings, services.user_tokens)
    if token_user is not None:
        request.state.token_user = token_user
        bind_user(token_user, request.path_params.get("user"))
    return tenant


def token_user(request: Request) -> str | None:
    """The user a user token binds this call to (None for an app key)."""
    user: str | None = getattr(request.state, "token_user", None)
    return user


async def admin_tenant(request: Request, services: ServicesDep) -> str:
    return tenant_for_admin(request.headers, services.settings)


AppTenant = Annotated[str, Depends(app_tenant)]
AdminTenant = Annotated[str, Depends(admin_tenant)]


async def json_body(request: Request) -> Any:
    """The request's JSON body, decoded once: by the body guard (`limits.BodyGuard`) when it ran,
    else here."""
    state = request.scope.get("state") or {}
    if PARSED_BODY in state:
        return state.pop(PARSED_BODY)
    return parse_json(await request.body())


def parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None


def caller_user(request: Request, body_user: str | None, *, required: bool) -> str | None:
    """The end user of an app-facing call: the X-Persona-User header, else the body's `user`."""
    bound = token_user(request)
    if bound is not None:
        bind_user(bound, request.headers.get(USER_HEADER), param=USER_HEADER)
        return bind_user(bound, body_user)
    header = request.headers.get(USER_HEADER)
    if header:
        return validate_user_id(header_text(header), param=USER_HEADER)
    if body_user:
        return validate_user_id(body_user)
    if required:
        raise InvalidRequest(
            "an end-user id is required: 'user' in the body or the X-Persona-User header",
            param="user",
            code="missing_user",
        )
    return None


Item = TypeVar("Item")


def batch(body: Item | list[Item], limit: int, noun: str) -> list[Item]:
    """A write route's body as a list: one item, or a batch of 1 to `limit` (422 otherwise)."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise ValidationFailed(f"the list of {noun} is empty")
    if len(items) > limit:
        raise ValidationFailed(f"at most {limit} {noun} per call")
    return items
