"""POST /v1/user-tokens: the app backend mints a short-lived token for one of its end users.

    POST /v1/user-tokens   {"user": "alice", "ttl_s": 900}  (app key)
    -> 201 {"object": "user_token", "token": "eyJ...", "user": "alice", "expires_at": 1767225600}

The token goes to the end user's browser or device (e.g. `/ui#token=<token>`); with it they can use
the end-user routes and the chat routes as themselves and nobody else, and no admin route.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from middleware.api.deps import ServicesDep
from middleware.api.responses import JSONBytes
from middleware.identity import refuse_user_token, tenant_for_app_key, validate_user_id
from middleware.user_tokens import MAX_TTL_S, MIN_TTL_S

router = APIRouter(tags=["user tokens"])


class UserTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(description="the end user the token acts for")
    ttl_s: int = Field(default=900, ge=MIN_TTL_S, le=MAX_TTL_S, description="lifetime in seconds")


@router.post("/v1/user-tokens", status_code=201)
async def create_user_token(body: UserTokenCreate, request: Request, services: ServicesDep) -> Response:
    refuse_user_token(request.headers)  # only the app key mints
    tenant = tenant_for_app_key(request.headers, services.settings)
    user = validate_user_id(body.user)
    token, expires_at = services.user_tokens.mint(tenant, user, body.ttl_s)
    return JSONBytes(
        {"object": "user_token", "token": token, "user": user, "expires_at": expires_at}, status_code=201
    )
