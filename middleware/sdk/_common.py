"""Request building shared by the sync and async resources."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

Message = Mapping[str, Any]
Content = str | Message
# Writes to the proxy are not idempotent: the SDK's automatic retries stay off for them.
NO_RETRY: dict[str, Any] = {"max_retries": 0}


class PersonaClient(Protocol):
    persona_user: str | None
    admin_key: str | None
    tenant: str | None

    @property
    def base_url(self) -> Any: ...


def require_user(client: PersonaClient, user: str | None) -> str:
    chosen = user or client.persona_user
    if not chosen:
        raise ValueError("no end-user id: pass user=... here or to the client")
    return chosen


def as_message(value: Content, role: str = "assistant") -> dict[str, Any]:
    return {"role": role, "content": value} if isinstance(value, str) else dict(value)


def as_context(value: str | Sequence[Message]) -> list[dict[str, Any]]:
    return [as_message(value, "user")] if isinstance(value, str) else [dict(m) for m in value]


def compact(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def root_url(client: PersonaClient) -> str:
    """The proxy's root (admin routes are not under /v1)."""
    base = str(client.base_url).rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def admin_url(client: PersonaClient, user: str, suffix: str = "") -> str:
    return f"{root_url(client)}/admin/users/{quote(user, safe='')}/persona{suffix}"


def admin_options(client: PersonaClient) -> dict[str, Any]:
    headers: dict[str, str] = {}
    if client.admin_key:
        headers["Authorization"] = f"Bearer {client.admin_key}"
    if client.tenant:
        headers["X-Persona-Tenant"] = client.tenant
    return {"headers": headers}


def preference_items(
    *,
    user: str | None,
    context: str | Sequence[Message] | None,
    chosen: Content | None,
    rejected: Content | None,
    rationale: str | None,
    idempotency_key: str | None,
    items: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any] | list[dict[str, Any]]:
    """One feedback object, or a list when `items` is given (each may name its own user)."""
    if items is not None:
        out = []
        for item in items:
            entry = dict(item)
            entry["context"] = as_context(entry["context"])
            entry["chosen"] = as_message(entry["chosen"])
            entry["rejected"] = as_message(entry["rejected"])
            entry.setdefault("user", user)
            out.append(compact(entry))
        return out
    if context is None or chosen is None or rejected is None:
        raise ValueError("context, chosen and rejected are required (or items=[...])")
    return compact(
        {
            "user": user,
            "context": as_context(context),
            "chosen": as_message(chosen),
            "rejected": as_message(rejected),
            "rationale": rationale,
            "idempotency_key": idempotency_key,
        }
    )
