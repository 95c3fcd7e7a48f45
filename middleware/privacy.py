"""Forget and export one user across every part of the system that stores something about them."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from middleware.config import Settings
from middleware.identity import validate_user_id
from middleware.store.connection import jobs_redis_url, redis_client
from middleware.store.evaluations import EvaluationStore
from middleware.store.users import export_user, forget_user


async def forget_everything(
    redis: Redis, tenant: str, user: str, queue_redis: Redis | None = None
) -> dict[str, Any]:
    """Keys under the user's hash tag, index entries, jobs (their queue entries in `queue_redis`,
    the job queue's Redis), then evaluation trials naming them."""
    result = await forget_user(redis, tenant, user, queue_redis)
    result.update(await EvaluationStore(redis).forget_user(tenant, user))
    return result


async def export_everything(redis: Redis, tenant: str, user: str) -> dict[str, Any]:
    data = await export_user(redis, tenant, user)
    data["evaluation_trials"] = await EvaluationStore(redis).user_trials(tenant, user)
    return data


async def forget_cli(settings: Settings, tenant: str, user: str) -> dict[str, Any]:
    validate_user_id(user)
    async with redis_client(settings) as redis, redis_client(settings, jobs_redis_url(settings)) as queue:
        return await forget_everything(redis, tenant, user, queue)


async def export_cli(settings: Settings, tenant: str, user: str) -> dict[str, Any]:
    validate_user_id(user)
    async with redis_client(settings) as redis:
        return await export_everything(redis, tenant, user)
