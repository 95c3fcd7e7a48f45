"""Operator routes of the auto mode's policy (README "Auto mode"): what it learned, per user and per
tenant, and a way to hand it a reward directly.

All need the admin key; the tenant is named by X-Persona-Tenant.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from middleware.api.deps import AdminTenant, ServicesDep, UserPath
from middleware.config import check_arm

router = APIRouter(prefix="/admin", tags=["admin"])


class RewardIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arm: str = Field(description="the arm that gave the answer, as in x-persona-arm", max_length=200)
    reward: float = Field(ge=0.0, le=1.0, description="how good the answer was for the user, in [0, 1]")
    previous: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="the reward this one replaces (a later signal on the same answer): no new pull",
    )

    @field_validator("arm")
    @classmethod
    def _known(cls, arm: str) -> str:
        return check_arm(arm)


@router.get("/users/{user}/policy")
async def user_policy(user: UserPath, tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    """The user's posterior per arm: alpha and beta (the tenant's prior plus the user's discounted
    rewards), the prior itself, rewarded pulls and their mean reward."""
    return await services.policy.describe_user(tenant, user)


@router.get("/policy")
async def tenant_policy(tenant: AdminTenant, services: ServicesDep) -> dict[str, Any]:
    """The tenant's posterior per arm (every user's rewards, discounted): the new users' prior."""
    return await services.policy.describe_tenant(tenant)


@router.post("/users/{user}/policy/rewards")
async def add_reward(
    user: UserPath, tenant: AdminTenant, services: ServicesDep, body: RewardIn
) -> dict[str, Any]:
    """Count one reward for an answer the user got from `arm` (e.g. from signals the app scored itself),
    or, with `previous`, change an answer's reward. Not idempotent: a retried call counts twice."""
    await services.policy.reward(tenant, user, body.arm, body.reward, previous=body.previous)
    return await services.policy.describe_user(tenant, user)
