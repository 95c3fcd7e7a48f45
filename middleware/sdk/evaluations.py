"""client.evaluations: blind own / other / baseline evaluation runs.

App side (app key; the user comes from user= here or on the client):
    t = client.evaluations.trial(run_id, prompt="Summarize ...")        # t.answers: A, B, C
    client.evaluations.choose(run_id, t.id, "B", rationale="shorter")   # or "tie" / "skip"

Operator side (admin_key= and tenant= on the client):
    run = client.evaluations.create(users=["alice", "bob"], model="gpt-4o-mini", name="spring")
    client.evaluations.report(run["id"])            # JSON: win rates, CIs, tests
    client.evaluations.report_png(run["id"])        # the chart, as PNG bytes
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict

from middleware.sdk._common import NO_RETRY, PersonaClient, admin_options, compact, require_user, root_url

Choice = Literal["A", "B", "C", "tie", "skip"]
# A choice is not retried by the client: a 409 means it was already recorded.


class TrialAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")

    label: str
    content: str


class EvaluationTrial(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    evaluation_id: str
    user: str
    answers: list[TrialAnswer]


class EvaluationChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    evaluation_id: str
    user: str
    choice: str
    rationale: str | None = None


def _trial_options(body: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
    """The user named for this call (it wins over the client's default X-Persona-User header), and an
    idempotency key (the caller's, else a fresh one) that makes the
    client's own retries safe: a retry finds the trial a first attempt stored."""
    key = idempotency_key or f"sdk-{uuid.uuid4().hex}"
    return {"headers": {"X-Persona-User": body["user"], "Idempotency-Key": key}}


def _choice_options(user: str | None) -> dict[str, Any]:
    return {**NO_RETRY, "headers": {"X-Persona-User": user}} if user else NO_RETRY


def _run_path(evaluation_id: str, suffix: str = "") -> str:
    return f"/evaluations/{quote(evaluation_id, safe='')}{suffix}"


def _admin_url(client: PersonaClient, suffix: str = "") -> str:
    return f"{root_url(client)}/admin/evaluations{suffix}"


def _trial_body(
    client: PersonaClient,
    user: str | None,
    prompt: str | None,
    messages: Sequence[Mapping[str, Any]] | None,
    max_tokens: int | None,
    temperature: float | None,
) -> dict[str, Any]:
    if (prompt is None) == (messages is None):
        raise ValueError("pass exactly one of prompt=... or messages=[...]")
    msgs = [{"role": "user", "content": prompt}] if prompt is not None else [dict(m) for m in messages or ()]
    return compact(
        {
            "user": require_user(client, user),
            "messages": msgs,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
    )


class Evaluations:
    def __init__(self, client: Any) -> None:
        self._client = client

    # --- app side -----------------------------------------------------------------------------------
    def trial(
        self,
        evaluation_id: str,
        *,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        user: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        idempotency_key: str | None = None,
    ) -> EvaluationTrial:
        body = _trial_body(self._client, user, prompt, messages, max_tokens, temperature)
        response = self._client.post(
            _run_path(evaluation_id, "/trials"),
            body=body,
            cast_to=httpx.Response,
            options=_trial_options(body, idempotency_key),
        )
        return EvaluationTrial.model_validate(response.json())

    def choose(
        self,
        evaluation_id: str,
        trial_id: str,
        choice: Choice,
        *,
        rationale: str | None = None,
        user: str | None = None,
    ) -> EvaluationChoice:
        path = _run_path(evaluation_id, f"/trials/{quote(trial_id, safe='')}/choice")
        body = compact({"choice": choice, "rationale": rationale})
        response = self._client.post(path, body=body, cast_to=httpx.Response, options=_choice_options(user))
        return EvaluationChoice.model_validate(response.json())

    # --- operator side ------------------------------------------------------------------------------
    def _admin(self, method: str, suffix: str = "", body: Any = None, query: Any = None) -> httpx.Response:
        options = {**admin_options(self._client), **({"params": query} if query else {})}
        if method == "get":
            response: httpx.Response = self._client.get(
                _admin_url(self._client, suffix), cast_to=httpx.Response, options=options
            )
        else:
            response = self._client.post(
                _admin_url(self._client, suffix), body=body, cast_to=httpx.Response, options=options
            )
        return response

    def create(self, *, users: Sequence[str], model: str, name: str | None = None) -> dict[str, Any]:
        body = compact({"users": list(users), "model": model, "name": name})
        result: dict[str, Any] = self._admin("post", "", body).json()
        return result

    def get(self, evaluation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._admin("get", f"/{quote(evaluation_id, safe='')}").json()
        return result

    def trials(self, evaluation_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._admin("get", f"/{quote(evaluation_id, safe='')}/trials").json()[
            "data"
        ]
        return result

    def close(self, evaluation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._admin("post", f"/{quote(evaluation_id, safe='')}/close", {}).json()
        return result

    def report(self, evaluation_id: str, *, seed: int = 0) -> dict[str, Any]:
        suffix = f"/{quote(evaluation_id, safe='')}/report"
        result: dict[str, Any] = self._admin("get", suffix, query={"seed": seed}).json()
        return result

    def report_png(self, evaluation_id: str, *, seed: int = 0) -> bytes:
        suffix = f"/{quote(evaluation_id, safe='')}/report.png"
        return self._admin("get", suffix, query={"seed": seed}).content


class AsyncEvaluations:
    def __init__(self, client: Any) -> None:
        self._client = client

    # --- app side -----------------------------------------------------------------------------------
    async def trial(
        self,
        evaluation_id: str,
        *,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        user: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        idempotency_key: str | None = None,
    ) -> EvaluationTrial:
        body = _trial_body(self._client, user, prompt, messages, max_tokens, temperature)
        response = await self._client.post(
            _run_path(evaluation_id, "/trials"),
            body=body,
            cast_to=httpx.Response,
            options=_trial_options(body, idempotency_key),
        )
        return EvaluationTrial.model_validate(response.json())

    async def choose(
        self,
        evaluation_id: str,
        trial_id: str,
        choice: Choice,
        *,
        rationale: str | None = None,
        user: str | None = None,
    ) -> EvaluationChoice:
        path = _run_path(evaluation_id, f"/trials/{quote(trial_id, safe='')}/choice")
        body = compact({"choice": choice, "rationale": rationale})
        response = await self._client.post(
            path, body=body, cast_to=httpx.Response, options=_choice_options(user)
        )
        return EvaluationChoice.model_validate(response.json())

    # --- operator side ------------------------------------------------------------------------------
    async def _admin(
        self, method: str, suffix: str = "", body: Any = None, query: Any = None
    ) -> httpx.Response:
        options = {**admin_options(self._client), **({"params": query} if query else {})}
        if method == "get":
            response: httpx.Response = await self._client.get(
                _admin_url(self._client, suffix), cast_to=httpx.Response, options=options
            )
        else:
            response = await self._client.post(
                _admin_url(self._client, suffix), body=body, cast_to=httpx.Response, options=options
            )
        return response

    async def create(self, *, users: Sequence[str], model: str, name: str | None = None) -> dict[str, Any]:
        body = compact({"users": list(users), "model": model, "name": name})
        result: dict[str, Any] = (await self._admin("post", "", body)).json()
        return result

    async def get(self, evaluation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = (await self._admin("get", f"/{quote(evaluation_id, safe='')}")).json()
        return result

    async def trials(self, evaluation_id: str) -> list[dict[str, Any]]:
        response = await self._admin("get", f"/{quote(evaluation_id, safe='')}/trials")
        result: list[dict[str, Any]] = response.json()["data"]
        return result

    async def close(self, evaluation_id: str) -> dict[str, Any]:
        response = await self._admin("post", f"/{quote(evaluation_id, safe='')}/close", {})
        result: dict[str, Any] = response.json()
        return result

    async def report(self, evaluation_id: str, *, seed: int = 0) -> dict[str, Any]:
        suffix = f"/{quote(evaluation_id, safe='')}/report"
        result: dict[str, Any] = (await self._admin("get", suffix, query={"seed": seed})).json()
        return result

    async def report_png(self, evaluation_id: str, *, seed: int = 0) -> bytes:
        suffix = f"/{quote(evaluation_id, safe='')}/report.png"
        return (await self._admin("get", suffix, query={"seed": seed})).content
