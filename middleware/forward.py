"""Forwarding any other API call to the upstream untouched: bodies streamed both ways.

The app's credentials are replaced by the upstream's; request headers that would switch the upstream
account (`OpenAI-Organization`, `OpenAI-Project`) or identify the app to the proxy are not forwarded.
Answers come back byte for byte (compressed answers stay compressed) with the upstream's headers,
less hop-by-hop ones and those that name the upstream account.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from middleware.config import Settings
from middleware.errors import UpstreamError, UpstreamTimeout
from middleware.upstream import (
    UpstreamAnswer,
    UpstreamRouter,
    body_chunks,
    lean_errors,
    stream_error_event,
    traced,
)
from middleware.upstream_http import LeanResponse

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
# Request headers never forwarded: the app's credentials, account switches, the proxy's own controls.
DROPPED_REQUEST = frozenset(
    {
        "authorization",
        "api-key",
        "x-api-key",
        "openai-organization",
        "openai-project",
        "cookie",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    }
)
DROPPED_RESPONSE = frozenset({"set-cookie", "openai-organization", "openai-project", "server", "date"})


def forwarded_request_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in DROPPED_REQUEST or lower.startswith("x-persona-"):
            continue
        kept[lower] = value
    return kept


def forwarded_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in HOP_BY_HOP and name.lower() not in DROPPED_RESPONSE
    ]


@dataclass
class Target:
    """Where one kind of raw call goes: a base URL and the credential header it takes."""

    base: str
    auth_headers: dict[str, str]


def openai_target(settings: Settings) -> Target | None:
    if not settings.upstream_api_base:
        return None
    key = settings.upstream_api_key.get_secret_value()
    return Target(settings.upstream_api_base.rstrip("/"), {"authorization": f"Bearer {key}"} if key else {})


def anthropic_target(settings: Settings) -> Target | None:
    if not settings.anthropic_api_base:
        return None
    key = settings.anthropic_api_key.get_secret_value() or settings.upstream_api_key.get_secret_value()
    return Target(settings.anthropic_api_base.rstrip("/"), {"x-api-key": key} if key else {})


# Not sent by the lean client: it frames the body's length itself and sends the body at once.
LEAN_DROPPED = frozenset({"content-length", "expect"})


class RawForwarder:
    """Sends one request to `target.base + path` and hands back the open upstream response.

    A POST whose body came whole (embeddings, completions, moderations: most of what passes through)
    goes over the upstream router's lean client of that base (`UpstreamRouter.raw_client`); other
    methods and bodies still arriving (uploads) go over the aiohttp session."""

    def __init__(
        self, settings: Settings, session: aiohttp.ClientSession, upstreams: UpstreamRouter | None = None
    ) -> None:
        self._session = session
        self._upstreams = upstreams
        self._timeout = aiohttp.ClientTimeout(
            total=settings.upstream_total_timeout_s,
            sock_connect=settings.upstream_connect_timeout_s,
            sock_read=settings.upstream_first_token_timeout_s,
        )

    async def open(
        self,
        target: Target,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamAnswer:
        if method == "POST" and isinstance(body, bytes) and self._upstreams is not None:
            return await self._open_lean(
                self._upstreams, target, path + (f"?{query}" if query else ""), headers, body
            )
        url = URL(target.base + path + (f"?{query}" if query else ""), encoded=True)
        try:
            return await self._session.request(
                method,
                url,
                data=body,
                headers={**headers, **target.auth_headers},
                timeout=self._timeout,
                auto_decompress=False,
                allow_redirects=False,
            )
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise UpstreamTimeout("the upstream did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"could not reach the upstream: {type(exc).__name__}") from exc

    @staticmethod
    async def _open_lean(
        upstreams: UpstreamRouter, target: Target, path: str, headers: dict[str, str], body: bytes
    ) -> LeanResponse:
        client = upstreams.raw_client(target.base, target.auth_headers)
        sent = {name: value for name, value in headers.items() if name not in LEAN_DROPPED}
        with lean_errors("the upstream did not answer in time", "could not reach the upstream"):
            return await traced(upstreams.tracing, client, "POST", path, body, sent)


def openai_stream_error(error: UpstreamError) -> bytes:
    return stream_error_event(error)


async def relay_body(
    response: UpstreamAnswer,
    sse_errors: bool,
    error_frame: Callable[[UpstreamError], bytes] = openai_stream_error,
) -> AsyncIterator[bytes]:
    """The upstream body as it arrives; a broken event stream ends with an error event."""
    try:
        async for chunk in body_chunks(response):
            yield chunk
    except UpstreamError as exc:
        if sse_errors:
            yield error_frame(exc)
