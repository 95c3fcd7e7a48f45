"""client.personas: operator helpers for a user's persona (need admin_key= and tenant= on the client)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from middleware.sdk._common import admin_options, admin_url, require_user
from middleware.sdk.types import Persona, PersonaVersion, RefreshJob


class Personas:
    def __init__(self, client: Any) -> None:
        self._client = client

    def _call(self, method: str, user: str | None, suffix: str = "", body: Any = None) -> Any:
        url = admin_url(self._client, require_user(self._client, user), suffix)
        options = admin_options(self._client)
        if method == "get":
            response = self._client.get(url, cast_to=httpx.Response, options=options)
        elif method == "delete":
            response = self._client.delete(url, cast_to=httpx.Response, options=options)
        else:
            response = getattr(self._client, method)(url, body=body, cast_to=httpx.Response, options=options)
        return response.json()

    def get(self, user: str | None = None) -> Persona:
        return Persona.model_validate(self._call("get", user))

    def put(
        self, text: str, *, exemplars: Sequence[Mapping[str, Any]] = (), user: str | None = None
    ) -> Persona:
        body = {"text": text, "exemplars": [dict(e) for e in exemplars]}
        return Persona.model_validate(self._call("put", user, body=body))

    def delete(self, user: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._call("delete", user)
        return result

    def versions(self, user: str | None = None) -> list[PersonaVersion]:
        return [PersonaVersion.model_validate(v) for v in self._call("get", user, "/versions")]

    def rollback(self, version: int, *, user: str | None = None) -> Persona:
        return Persona.model_validate(self._call("post", user, "/rollback", body={"version": version}))

    def refresh(self, user: str | None = None) -> RefreshJob:
        return RefreshJob.model_validate(self._call("post", user, "/refresh", body={}))


class AsyncPersonas:
    def __init__(self, client: Any) -> None:
        self._client = client

    async def _call(self, method: str, user: str | None, suffix: str = "", body: Any = None) -> Any:
        url = admin_url(self._client, require_user(self._client, user), suffix)
        options = admin_options(self._client)
        if method == "get":
            response = await self._client.get(url, cast_to=httpx.Response, options=options)
        elif method == "delete":
            response = await self._client.delete(url, cast_to=httpx.Response, options=options)
        else:
            response = await getattr(self._client, method)(
                url, body=body, cast_to=httpx.Response, options=options
            )
        return response.json()

    async def get(self, user: str | None = None) -> Persona:
        return Persona.model_validate(await self._call("get", user))

    async def put(
        self, text: str, *, exemplars: Sequence[Mapping[str, Any]] = (), user: str | None = None
    ) -> Persona:
        body = {"text": text, "exemplars": [dict(e) for e in exemplars]}
        return Persona.model_validate(await self._call("put", user, body=body))

    async def delete(self, user: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("delete", user)
        return result

    async def versions(self, user: str | None = None) -> list[PersonaVersion]:
        return [PersonaVersion.model_validate(v) for v in await self._call("get", user, "/versions")]

    async def rollback(self, version: int, *, user: str | None = None) -> Persona:
        return Persona.model_validate(await self._call("post", user, "/rollback", body={"version": version}))

    async def refresh(self, user: str | None = None) -> RefreshJob:
        return RefreshJob.model_validate(await self._call("post", user, "/refresh", body={}))
