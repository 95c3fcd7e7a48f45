"""The OpenAI Responses API: POST /v1/responses personalized; a stored response's routes
(GET/DELETE /v1/responses/{id}, GET .../input_items, POST .../cancel) only for the tenant that made it.

The persona block is appended to `instructions` (never to `input`: stored input items would pile up
across a `previous_response_id` chain). What the app gets back shows its own `instructions`: in the
Response object, and in the response.* events of a stream, whose other bytes are relayed unchanged.
OpenAI-compatible upstreams get the body as JSON bytes; provider-prefixed models go through litellm.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from middleware.api.chat_schema import FORBIDDEN_FIELDS
from middleware.api.chatlike import Answer, Framing, admit, answer
from middleware.api.passthrough import forward
from middleware.errors import (
    ForbiddenField,
    NotFound,
    PersonaError,
    UpstreamError,
    ValidationFailed,
)
from middleware.identity import tenant_for_app_key
from middleware.personalize.placement import (
    InstructionsSwap,
    ResponsesStreamRestorer,
    error_event,
    response_id_of,
    restore_response,
    restore_response_bytes,
    restore_stream,
    with_instructions,
)
from middleware.services import Services
from middleware.store.response_owners import ResponseOwner
from middleware.upstream import PassthroughUpstream, answer_chunks, relayed_headers

router = APIRouter(tags=["responses"])
log = logging.getLogger("middleware.api.responses")

ROUTE = "/v1/responses"
RESPONSES = Framing(metric_route=ROUTE)


def validate_responses_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed("the request body must be a JSON object")
    if not FORBIDDEN_FIELDS.isdisjoint(body):
        forbidden = min(FORBIDDEN_FIELDS.intersection(body))
        raise ForbiddenField(
            f"field {forbidden!r} is not allowed: the proxy decides where requests go", param=forbidden
        )
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ValidationFailed("'model' is required and must be a string", param="model")
    return body


async def owned(
    services: Services, tenant: str, response_id: str, *, param: str | None = None
) -> ResponseOwner:
    """The record of a response this tenant created; 404 (as the upstream words it) otherwise."""
    owner = await services.response_owners.owner(response_id)
    if owner is None or owner.tenant != tenant:
        raise NotFound(f"Response with id '{response_id}' not found.", param=param)
    return owner


def remember(services: Services, response_id: str | None, owner: ResponseOwner) -> None:
    """Record the owner, behind the answer; a Redis fault loses only later retrieval, never the
    answer in hand."""
    if response_id is not None:
        services.response_owners.record_later(response_id, owner)


@router.post(ROUTE)
async def create_response(request: Request) -> Response:
    services: Services = request.app.state.services
    call = await admit(request, services, validate_responses_body)
    body = call.body
    try:
        previous = body.get("previous_response_id")
        if isinstance(previous, str) and previous:
            await owned(services, call.tenant, previous, param="previous_response_id")
        store = body.get("store") is not False
        if call.found is None:
            created = Created(services, ResponseOwner(call.tenant, False, None), store)
        else:
            instructions, app_chars = with_instructions(body.get("instructions"), call.found.block)
            body["instructions"] = instructions
            owner = ResponseOwner(call.tenant, True, app_chars)
            created = Created(services, owner, store, InstructionsSwap(instructions, app_chars))
        upstream, body["model"] = services.upstreams.route(body["model"])
    except BaseException:
        await call.lease.release()
        raise
    relay: dict[str, str] = {}
    if isinstance(upstream, PassthroughUpstream):
        work = _lean(services.upstreams.passthrough("/responses"), body, created, relay)
    else:
        work = _bridged(services, body, created)
    return await answer(request, services, call, work, framing=RESPONSES, relay=relay)


class Created:
    """What the answer to one created response needs: the app's own instructions restored in it (the
    sent text swapped back in place, `swap`; None: nothing was added) and its owner recorded as soon
    as its id is known (unless `store` is false)."""

    __slots__ = ("owner", "services", "store", "swap")

    def __init__(
        self, services: Services, owner: ResponseOwner, store: bool, swap: InstructionsSwap | None = None
    ) -> None:
        self.services = services
        self.owner = owner
        self.store = store
        self.swap = swap

    def whole(self, data: bytes) -> bytes:
        """A whole Response object, restored; its owner recorded."""
        if self.owner.personalized:
            data, response_id = restore_response_bytes(data, self.owner.app_chars, self.swap)
        elif self.store:
            response_id = response_id_of(data)
        if self.store:
            remember(self.services, response_id, self.owner)
        return data

    def response(self, response: dict[str, Any]) -> bytes:
        """A Response object as a dict (litellm's bridge): restored in place, its owner recorded."""
        if self.owner.personalized:
            restore_response(response, self.owner.app_chars)
        if self.store:
            found = response.get("id")
            remember(self.services, found if isinstance(found, str) else None, self.owner)
        return orjson.dumps(response)

    async def events(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The event stream with the app's instructions restored; the owner recorded before the app
        sees the response id; a mid-stream failure sent as a Responses `error` event."""
        owner = self.owner
        restorer = ResponsesStreamRestorer(owner.app_chars, restore=owner.personalized, swap=self.swap)
        recorded = not self.store
        try:
            async for chunk in chunks:
                out = restorer.feed(chunk)
                if not recorded and restorer.response_id is not None:
                    recorded = True
                    remember(self.services, restorer.response_id, owner)
                if out:
                    yield out
            tail = restorer.flush()
            if tail:
                yield tail
        except PersonaError as exc:
            self.services.metrics.route_requests.labels(ROUTE, "stream", "broken").inc()
            yield restorer.flush() + error_event(
                exc.message, exc.code or "upstream_error", restorer.last_sequence
            )


async def _lean(
    lean: PassthroughUpstream, body: dict[str, Any], created: Created, relay: dict[str, str]
) -> Answer:
    """An OpenAI-compatible upstream's /responses: JSON bytes in, bytes out."""
    if body.get("stream"):
        opened = await lean.open(body)
        relay.update(relayed_headers(opened.headers))
        return Answer(created.events(answer_chunks(opened)))
    return Answer(created.whole(await lean.complete(body, relay)))


async def _bridged(services: Services, body: dict[str, Any], created: Created) -> Answer:
    """A provider-prefixed model: litellm's Responses bridge."""
    result = await services.upstreams.litellm().responses(body)
    if body.get("stream"):
        return Answer(created.events(_litellm_events(result)))
    return Answer(created.response(result.model_dump(exclude_none=True)))


async def _litellm_events(stream: Any) -> AsyncIterator[bytes]:
    try:
        async for event in stream:
            data = event.model_dump(exclude_none=True) if hasattr(event, "model_dump") else dict(event)
            name = str(data.get("type", "message"))
            yield b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
    except PersonaError:
        raise
    except Exception as exc:
        raise UpstreamError(f"the upstream stream broke: {exc}") from exc


# --- a stored response: only its owner reaches it --------------------------------------------


@router.get(ROUTE + "/{response_id}")
async def retrieve_response(response_id: str, request: Request) -> Response:
    return await _owned_call(request, response_id, restore=True)


@router.post(ROUTE + "/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request) -> Response:
    return await _owned_call(request, response_id, restore=True)


@router.get(ROUTE + "/{response_id}/input_items")
async def input_items(response_id: str, request: Request) -> Response:
    return await _owned_call(request, response_id, restore=False)


@router.delete(ROUTE + "/{response_id}")
async def delete_response(response_id: str, request: Request) -> Response:
    services: Services = request.app.state.services
    tenant = tenant_for_app_key(request.headers, services.settings)
    await owned(services, tenant, response_id)
    relayed = await forward(request, services)
    if 200 <= relayed.status_code < 300:
        await services.response_owners.forget(response_id)
    return relayed


async def _owned_call(request: Request, response_id: str, *, restore: bool) -> Response:
    services: Services = request.app.state.services
    tenant = tenant_for_app_key(request.headers, services.settings)
    owner = await owned(services, tenant, response_id)
    relayed = await forward(request, services, plain=restore and owner.personalized)
    if not (restore and owner.personalized and isinstance(relayed, StreamingResponse)):
        return relayed
    if "text/event-stream" in (relayed.headers.get("content-type") or ""):
        # GET ...?stream=true replays the events: restore them on the way.
        restorer = ResponsesStreamRestorer(owner.app_chars)
        relayed.body_iterator = restore_stream(relayed.body_iterator, restorer)
        return relayed
    # A Response object (or an error): restore `instructions` in the whole JSON.
    data = b"".join([c if isinstance(c, bytes) else str(c).encode() async for c in relayed.body_iterator])
    if relayed.status_code == 200 and relayed.headers.get("content-encoding") is None:
        data, _ = restore_response_bytes(data, owner.app_chars)
    headers = {k: v for k, v in relayed.headers.items() if k not in ("content-length", "content-type")}
    return Response(data, status_code=relayed.status_code, media_type="application/json", headers=headers)

