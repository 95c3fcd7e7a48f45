"""Everything stored about one user: export it, or forget it.

Forgetting deletes every key under the user's hash tag (found with SCAN, so nothing is missed by a
stale list), the index entries that name the user (tenant user set, comparison and answer owners), and the
user's job records, including what the job queue keeps for those jobs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from middleware.models import Persona
from middleware.store import keys
from middleware.store.guard import fail_closed

# What the job queue library keeps per job id, named by the library itself.
QUEUE_KEY_PREFIXES = (job_key_prefix, result_key_prefix, retry_key_prefix, in_progress_key_prefix)
SCAN_COUNT = 500


class UserIndex:
    """Which users a tenant knows, and what is stored for them."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def members(self, tenant: str) -> list[str]:
        """Every user id known in the tenant, sorted."""
        found = await fail_closed(self._redis.smembers(keys.tenant_users(tenant)))
        return sorted(_text(m) or "" for m in found)

    async def persona_and_preferences(self, tenant: str, users: list[str]) -> list[tuple[bool, int]]:
        """For each user, (has a current persona, number of preference records): one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for user in users:
            pipe.exists(keys.persona_current(tenant, user))
            pipe.xlen(keys.prefs(tenant, user))
        facts = await fail_closed(pipe.execute())
        return [(bool(p), int(n)) for p, n in zip(facts[::2], facts[1::2], strict=True)]

    async def all_users(self) -> AsyncIterator[tuple[str, str]]:
        """(tenant, user) of every user of every tenant (SCAN, so safe on a large store)."""
        async for index_key in self._redis.scan_iter(match=keys.tenant_pattern_users(), count=SCAN_COUNT):
            tenant = _text(index_key).split(":")[2]  # type: ignore[union-attr]
            async for raw_user in self._redis.sscan_iter(index_key, count=SCAN_COUNT):
                yield tenant, _text(raw_user) or ""


async def user_keys(redis: Redis, tenant: str, user: str) -> list[str]:
    found: list[str] = []
    async for key in redis.scan_iter(match=keys.user_pattern(tenant, user), count=SCAN_COUNT):
        found.append(key.decode() if isinstance(key, bytes) else key)
    return sorted(found)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def forget_user(
    redis: Redis, tenant: str, user: str, queue_redis: Redis | None = None
) -> dict[str, Any]:
    """Delete everything about the user; returns counts. Idempotent. `queue_redis` holds the job
    queue's keys (PERSONA_JOBS_REDIS_URL; default: `redis`)."""
    job_ids = [_text(j) or "" for j in await fail_closed(redis.smembers(keys.user_jobs(tenant, user)))]
    found = await fail_closed(user_keys(redis, tenant, user))
    comparison_prefix = keys.comparison_prefix(tenant, user)
    # `…:comparisons:<id>` (pending) and `…:comparisons:<id>:<marker>` (claimed, judged) all name an id.
    comparison_ids = sorted(
        {k[len(comparison_prefix) :].split(":", 1)[0] for k in found if k.startswith(comparison_prefix)}
    )

    feedback_prefix = keys.feedback_prefix(tenant, user)
    response_ids = sorted(k[len(feedback_prefix) :] for k in found if k.startswith(feedback_prefix))

    # Queued jobs first leave the queue, so no worker starts them after this.
    if job_ids:
        queue = (queue_redis if queue_redis is not None else redis).pipeline(transaction=False)
        for job_id in job_ids:
            queue.zrem(keys.JOB_QUEUE, job_id)
            queue.delete(*(p + str(job_id) for p in QUEUE_KEY_PREFIXES))
        await fail_closed(queue.execute())

    # A plain pipeline: its commands go to whichever node holds each key (a multi-key DEL is split
    # by slot on a cluster), so nothing here needs the keys to share a slot.
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.zrem(keys.tenant_job_slots(tenant), job_id)
        pipe.delete(keys.job_record(job_id))
    for comparison_id in comparison_ids:
        pipe.delete(keys.comparison_owner(comparison_id))
    for response_id in response_ids:
        pipe.delete(keys.feedback_owner(response_id))
    pipe.srem(keys.tenant_users(tenant), user)
    pipe.delete(keys.user_rate_log(tenant, user))  # lives in the tenant's limits slot, not the user's
    pipe.hdel(keys.segment_members(tenant), user)  # the assignment lives in the tenant's segments slot
    for start in range(0, len(found), SCAN_COUNT):
        pipe.delete(*found[start : start + SCAN_COUNT])
    await fail_closed(pipe.execute())
    # Keys written while we scanned (a racing write) are caught by a second pass.
    late = await fail_closed(user_keys(redis, tenant, user))
    if late:
        await fail_closed(redis.delete(*late))
    return {
        "tenant": tenant,
        "user": user,
        "deleted_keys": len(found) + len(late),
        "deleted_jobs": len(job_ids),
        "deleted_comparison_owners": len(comparison_ids),
        "deleted_feedback_records": len(response_ids),
    }


def _json_or_text(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


async def export_user(redis: Redis, tenant: str, user: str) -> dict[str, Any]:
    """Everything stored about the user, as JSON-ready data."""
    from middleware.store.preferences import PreferenceStore

    tag = keys.user_tag(tenant, user)
    found = await fail_closed(user_keys(redis, tenant, user))
    current_raw = await fail_closed(redis.get(keys.persona_current(tenant, user)))
    current = Persona.model_validate_json(current_raw) if current_raw else None
    version_prefix = keys.persona_version_prefix(tenant, user)
    version_keys = [k for k in found if k.startswith(version_prefix)]
    versions = []
    for raw in await fail_closed(redis.mget(version_keys)) if version_keys else []:
        if raw:
            versions.append(Persona.model_validate_json(raw).model_dump(mode="json"))
    versions.sort(key=lambda v: v["version"])
    records = await PreferenceStore(redis).records(tenant, user)

    adapters, comparisons, sessions, feedback, other = [], {}, {}, {}, []
    for key in found:
        rest = key[len(tag) + 1 :]
        if rest.startswith("adapter:"):
            kind = _text(await fail_closed(redis.type(key)))
            size = await fail_closed(redis.strlen(key)) if kind == "string" else None
            ttl = await fail_closed(redis.ttl(key))
            adapters.append({"key": key, "name": rest, "type": kind, "bytes": size, "ttl_s": ttl})
        elif rest.startswith("comparisons:"):
            comparisons[rest.split(":", 1)[1]] = await _dump_key(redis, key)
        elif rest.startswith("feedback:"):
            feedback[rest.split(":", 1)[1]] = await _dump_key(redis, key)
        elif rest.startswith("sessions:"):
            sessions[rest.split(":", 1)[1]] = await _dump_key(redis, key)
        elif not rest.startswith(("persona", "prefs", "ctx:", "contexts")):
            other.append({"key": key, "value": await _dump_key(redis, key)})

    job_ids = sorted(_text(j) or "" for j in await fail_closed(redis.smembers(keys.user_jobs(tenant, user))))
    jobs = []
    for job_id in job_ids:
        raw = await fail_closed(redis.hgetall(keys.job_record(job_id)))
        if raw:
            jobs.append({_text(k): _json_or_text(v) for k, v in raw.items()})
    contexts = await _export_contexts(redis, tenant, user, found)
    return {
        "tenant": tenant,
        "user": user,
        "exported_at": datetime.now(UTC).isoformat(),
        "known_in_tenant": bool(await fail_closed(redis.sismember(keys.tenant_users(tenant), user))),
        "segment": _text(await fail_closed(redis.hget(keys.segment_members(tenant), user))),
        "persona": current.model_dump(mode="json") if current else None,
        "persona_versions": versions,
        "contexts": contexts,
        "preferences": [
            {"id": r.id, "kind": r.kind, "stream_id": r.stream_id, "data": r.data} for r in records
        ],
        "adapters": adapters,
        "comparisons": comparisons,
        "sessions": sessions,
        "feedback": feedback,
        "jobs": jobs,
        "other_keys": other,
        "keys": found,
    }


async def _export_contexts(redis: Redis, tenant: str, user: str, found: list[str]) -> dict[str, Any]:
    """The context personas: each line's current version and all versions, and the router."""
    raw = await fail_closed(redis.hgetall(keys.contexts(tenant, user)))
    fields = {_text(k) or "": v for k, v in raw.items()}
    names = sorted(
        _text(n) or "" for n in await fail_closed(redis.smembers(keys.context_names(tenant, user)))
    )
    lines: dict[str, Any] = {}
    for name in names:
        prefix = keys.context_version_prefix(tenant, user, name)
        version_keys = [k for k in found if k.startswith(prefix) and k[len(prefix) :].isdigit()]
        blobs = await fail_closed(redis.mget(version_keys)) if version_keys else []
        versions = sorted(
            (Persona.model_validate_json(b).model_dump(mode="json") for b in blobs if b),
            key=lambda v: v["version"],
        )
        current = fields.get(f"c:{name}")
        lines[name] = {
            "current": Persona.model_validate_json(current).model_dump(mode="json") if current else None,
            "versions": versions,
        }
    router = fields.get("router")
    return {"lines": lines, "router": _json_or_text(router) if router else None}


async def _dump_key(redis: Redis, key: str) -> Any:
    kind = _text(await fail_closed(redis.type(key)))
    if kind == "string":
        return _json_or_text(await fail_closed(redis.get(key)))
    if kind == "hash":
        raw = await fail_closed(redis.hgetall(key))
        return {_text(k): _json_or_text(v) for k, v in raw.items()}
    if kind == "set":
        return sorted(_text(m) or "" for m in await fail_closed(redis.smembers(key)))
    if kind == "zset":
        return [[_text(m), s] for m, s in await fail_closed(redis.zrange(key, 0, -1, withscores=True))]
    if kind == "list":
        return [_json_or_text(v) for v in await fail_closed(redis.lrange(key, 0, -1))]
    if kind == "stream":
        entries = await fail_closed(redis.xrange(key))
        return [
            {"id": _text(i), "fields": {_text(k): _json_or_text(v) for k, v in f.items()}} for i, f in entries
        ]
    return None
