"""Forwarding a chat call upstream.

Two paths behind one interface:
- `PassthroughUpstream`: OpenAI-compatible upstreams get the request body as JSON bytes over the lean
  client's keep-alive connections (`upstream_http.py`) and the answer back as bytes, unchanged, never
  buffered when streaming. (Measured: litellm costs ~4 ms CPU per call, httpx was ~6x slower than
  aiohttp under concurrency, and aiohttp ~6x the lean client's CPU per call; see docs/ARCHITECTURE.md,
  "Performance of the hot path".)
- `LitellmUpstream`: any other provider, translated by litellm.

Both retry 429/5xx/connection errors before the first byte (one tenacity loop, `retrying`), with
connect, first-token and total timeouts.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from middleware.config import Settings
from middleware.errors import UpstreamError, UpstreamNotConfigured, UpstreamTimeout
from middleware.tracing import TRACING_OFF, Tracing
from middleware.upstream_http import LeanClient, LeanResponse, UpstreamConnectionError

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# Provider prefixes that need litellm's translation even when an OpenAI-compatible base is set.
LITELLM_PROVIDERS = frozenset(
    {
        "anthropic",
        "azure",
        "azure_ai",
        "bedrock",
        "vertex_ai",
        "gemini",
        "cohere",
        "mistral",
        "groq",
        "ollama",
        "ollama_chat",
        "huggingface",
        "together_ai",
        "fireworks_ai",
        "deepseek",
        "xai",
        "openrouter",
        "perplexity",
        "replicate",
        "sagemaker",
        "watsonx",
        "databricks",
        "cloudflare",
        "ai21",
        "nvidia_nim",
        "cerebras",
        "deepinfra",
        "hosted_vllm",
        "litellm_proxy",
    }
)
# Upstream answer headers the app must see (tracing, back-off, rate limits), on every route.
RELAYED_HEADERS = frozenset(
    {"x-request-id", "openai-processing-ms", "retry-after", "retry-after-ms", "x-should-retry"}
)
T = TypeVar("T")
# What to set when no upstream is configured (start-up warning and the chat error say the same).
UPSTREAM_SETTINGS_HINT = (
    "set PERSONA_UPSTREAM_API_BASE (an OpenAI-compatible base URL, e.g. https://api.openai.com/v1) and "
    "PERSONA_UPSTREAM_API_KEY, or the variables of a litellm provider (e.g. OPENAI_API_KEY, or "
    "ANTHROPIC_API_KEY with models named anthropic/...)"
)


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream headers relayed to the app: RELAYED_HEADERS and every x-ratelimit-*."""
    found: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in RELAYED_HEADERS or lower.startswith("x-ratelimit-"):
            found[lower] = value
    return found


class Upstream(Protocol):
    async def complete(self, body: dict[str, Any], relay: dict[str, str] | None = None) -> bytes:
        """The whole JSON answer (OpenAI chat.completion), or an UpstreamError.

        `relay`, when given, receives the upstream headers the app must see (`relayed_headers`)."""

    async def stream(self, body: dict[str, Any], relay: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        """Open the stream (errors before the first byte raise here) and return its SSE bytes."""


def lean_client(settings: Settings) -> LeanClient:
    """The lean client of the OpenAI-compatible base in the settings, its credentials framed in."""
    headers = {"User-Agent": "persona-middleware", "Accept": "*/*", "Content-Type": "application/json"}
    key = settings.upstream_api_key.get_secret_value()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return lean_client_for(settings, settings.upstream_api_base or "", headers)


def lean_client_for(settings: Settings, base: str, headers: dict[str, str]) -> LeanClient:
    """A lean client of `base` with these fixed headers and the upstream timeouts of the settings."""
    return LeanClient(
        base,
        headers,
        limit=settings.upstream_max_connections,
        connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_first_token_timeout_s,
        total_timeout_s=settings.upstream_total_timeout_s,
    )


class UpstreamStatus(Exception):
    def __init__(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.headers = relayed_headers(headers) if headers else {}


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, UpstreamStatus):
        return exc.status in RETRYABLE_STATUS
    if isinstance(exc, UpstreamConnectionError):
        return True
    return isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, aiohttp.ServerTimeoutError)


async def retrying(
    settings: Settings, attempt: Callable[[], Awaitable[T]], on_retry: Callable[[], None]
) -> T:
    """Run `attempt` until it succeeds or a non-retryable error; 429/5xx/connect errors are retried."""

    try:  # the common case pays nothing for the retry machinery
        return await attempt()
    except Exception as exc:
        if not _is_retryable(exc) or settings.upstream_max_attempts <= 1:
            raise
    on_retry()
    await asyncio.sleep(settings.upstream_retry_initial_s)

    def before_sleep(_: Any) -> None:
        on_retry()

    async for try_ in AsyncRetrying(
        stop=stop_after_attempt(settings.upstream_max_attempts - 1),
        wait=wait_exponential_jitter(
            multiplier=settings.upstream_retry_initial_s, max=settings.upstream_retry_max_s
        ),
        retry=retry_if_exception(_is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with try_:
            return await attempt()
    raise AssertionError("unreachable")  # pragma: no cover


def error_from_upstream(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> UpstreamError:
    """Keep the upstream's own message and relayed headers; 4xx keep their status, 5xx become 502."""
    error = _error_from_upstream(status, body)
    if headers:
        error.headers = relayed_headers(headers)
    return error


def _error_from_upstream(status: int, body: bytes) -> UpstreamError:
    message, error_type, code, param = f"upstream answered {status}", None, None, None
    try:
        err = orjson.loads(body).get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            error_type, code, param = err.get("type"), err.get("code"), err.get("param")
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if status >= 500:
        return UpstreamError(f"upstream error ({status}): {message}", code="upstream_error")
    return UpstreamError(
        message,
        status_code=status,
        error_type=error_type or ("rate_limit_error" if status == 429 else "invalid_request_error"),
        code=str(code) if code is not None else None,
        param=param,
    )


def stream_error_event(error: UpstreamError) -> bytes:
    return b"data: " + orjson.dumps(error.to_body()) + b"\n\n"


class PassthroughUpstream:
    """An OpenAI-compatible base's `path` (chat completions, the Responses API) over the lean client
    (`upstream_http.py`): the body as JSON bytes, the answer back as bytes, a stream as it arrives."""

    def __init__(
        self,
        settings: Settings,
        client: LeanClient,
        on_retry: Callable[[], None],
        path: str = "/chat/completions",
        tracing: Tracing = TRACING_OFF,
    ) -> None:
        self._settings = settings
        self._client = client
        self._on_retry = on_retry
        self._path = path
        self._tracing = tracing

    async def _open(self, payload: bytes) -> LeanResponse:
        async def attempt() -> LeanResponse:
            response = await traced(self._tracing, self._client, "POST", self._path, payload)
            if response.status in RETRYABLE_STATUS:
                raise UpstreamStatus(response.status, await response.read(), response.headers)
            return response

        try:
            with lean_errors("the upstream did not answer in time", "could not reach the upstream"):
                return await retrying(self._settings, attempt, self._on_retry)
        except UpstreamStatus as exc:
            raise error_from_upstream(exc.status, exc.body, exc.headers) from None

    async def complete(self, body: dict[str, Any], relay: dict[str, str] | None = None) -> bytes:
        response = await self._open(orjson.dumps(body))
        if relay is not None:
            relay.update(relayed_headers(response.headers))
        try:
            with lean_errors("the upstream did not finish in time", "the upstream connection failed"):
                data = await response.read()
        finally:
            response.release()
        if response.status >= 400:
            raise error_from_upstream(response.status, data, response.headers)
        return data

    async def stream(self, body: dict[str, Any], relay: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        response = await self.open(body)
        if relay is not None:
            relay.update(relayed_headers(response.headers))
        return self._relay(response)

    async def open(self, body: dict[str, Any]) -> LeanResponse:
        """The upstream response once it answered 2xx (errors raise here); the caller reads it
        (`answer_chunks`)."""
        response = await self._open(orjson.dumps(body))
        if response.status >= 400:
            data = await response.read()
            raise error_from_upstream(response.status, data, response.headers)
        return response

    async def _relay(self, response: LeanResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in answer_chunks(response):
                yield chunk
        except UpstreamError as exc:
            yield stream_error_event(exc)


class lean_errors:  # named as the function it replaces: `with lean_errors(...)`
    """The lean client's errors as the proxy's: a timeout -> UpstreamTimeout(`timed_out`), a failed
    connection -> UpstreamError(`broken`: what failed). A class rather than a generator-based
    context manager: it runs two or three times a call on the hot path (a third of the cost)."""

    __slots__ = ("_broken", "_timed_out")

    def __init__(self, timed_out: str, broken: str) -> None:
        self._timed_out = timed_out
        self._broken = broken

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeout(self._timed_out) from exc
        if isinstance(exc, UpstreamConnectionError):
            raise UpstreamError(f"{self._broken}: {exc}") from exc


async def traced(
    tracing: Tracing,
    client: LeanClient,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> LeanResponse:
    """`client.request`, in an `upstream.call` span carried by its `traceparent` when tracing is on."""
    if not tracing.enabled:
        return await client.request(method, path, body, headers)
    span, carried = tracing.start_upstream_call(method, client.pool.host, client.pool.port)
    try:
        response = await client.request(method, path, body, {**(headers or {}), **carried})
    except BaseException as exc:
        tracing.end_upstream_call(span, error=exc)
        raise
    tracing.end_upstream_call(span, status=response.status)
    return response


async def answer_chunks(response: LeanResponse) -> AsyncIterator[bytes]:
    """A lean client's answer body as it arrives. A stalled or broken body raises
    UpstreamTimeout/UpstreamError; a reader that stops early drops the connection (the upstream sees
    the abort at once), one that read to the end gives it back to the pool."""
    chunks = response.chunks()
    try:
        with lean_errors("the upstream stopped sending in time", "the upstream stream broke"):
            async for chunk in chunks:
                yield chunk
    finally:
        await chunks.aclose()
        response.close()


# An upstream answer of the routes passed through (`forward.py`): the lean client's, or aiohttp's.
UpstreamAnswer = aiohttp.ClientResponse | LeanResponse


async def body_chunks(response: UpstreamAnswer) -> AsyncIterator[bytes]:
    """An upstream body as it arrives. A stalled or broken body raises UpstreamTimeout/UpstreamError.

    An aiohttp response is closed (not released) at the end: that drops the connection, so the
    upstream sees the abort at once when the client went away mid-stream (`answer_chunks` does the
    same for the lean client's, and gives the connection back when the body was read whole)."""
    if isinstance(response, LeanResponse):
        async for chunk in answer_chunks(response):
            yield chunk
        return
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise UpstreamTimeout("the upstream stopped sending in time") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"the upstream stream broke: {type(exc).__name__}") from exc
    finally:
        response.close()


class LitellmUpstream:
    """Any provider litellm knows. Imported lazily: litellm's import takes seconds."""

    def __init__(self, settings: Settings, on_retry: Callable[[], None]) -> None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.telemetry = False
        # /v1/messages without an Anthropic base goes to the configured upstream's chat completions
        # (what every OpenAI-compatible server speaks), not to its Responses API.
        litellm.use_chat_completions_url_for_anthropic_messages = True
        self._litellm = litellm
        self._settings = settings
        self._on_retry = on_retry

    def _kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(body)
        if self._settings.upstream_api_base:
            kwargs["api_base"] = self._settings.upstream_api_base
        key = self._settings.upstream_api_key.get_secret_value()
        if key:
            kwargs["api_key"] = key
        kwargs["num_retries"] = 0
        kwargs["timeout"] = self._settings.upstream_total_timeout_s
        return kwargs

    async def _call(self, body: dict[str, Any], api: str = "acompletion") -> Any:
        litellm = self._litellm
        call = getattr(litellm, api)

        async def attempt() -> Any:
            try:
                return await call(**self._kwargs(body))
            except litellm.exceptions.Timeout:
                raise
            except litellm.exceptions.APIConnectionError as exc:
                raise aiohttp.ClientConnectionError(str(exc)) from exc
            except Exception as exc:
                # litellm maps every provider error to an exception carrying the HTTP status.
                status = getattr(exc, "status_code", None)
                if not isinstance(status, int):
                    raise
                message = getattr(exc, "message", None) or str(exc)
                raise UpstreamStatus(status, orjson.dumps({"error": {"message": message}})) from exc

        try:
            return await retrying(self._settings, attempt, self._on_retry)
        except UpstreamStatus as exc:
            raise error_from_upstream(exc.status, exc.body) from None
        except litellm.exceptions.Timeout as exc:
            raise UpstreamTimeout("the upstream did not answer in time") from exc
        except aiohttp.ClientConnectionError as exc:
            raise UpstreamError(f"could not reach the upstream: {exc}") from exc

    def missing_settings(self, model: str) -> list[str] | None:
        """For a model without a provider prefix and no upstream base or key in the settings: None when
        litellm can reach it (its provider's variables are set), else the variables it lacks (empty
        when litellm cannot even tell the provider)."""
        try:
            self._litellm.get_llm_provider(model)
        except Exception:
            return []
        missing = self._litellm.validate_environment(model=model).get("missing_keys") or []
        return [str(key) for key in missing] or None

    async def complete(self, body: dict[str, Any], relay: dict[str, str] | None = None) -> bytes:
        response = await self._call(body)
        if relay is not None:
            relay.update(litellm_headers(response))
        return orjson.dumps(response.model_dump(exclude_none=True))

    async def stream(self, body: dict[str, Any], relay: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        stream = await self._call({**body, "stream": True})
        if relay is not None:
            relay.update(litellm_headers(stream))
        return self._relay(stream)

    async def responses(self, body: dict[str, Any]) -> Any:
        """litellm's Responses API bridge: a ResponsesAPIResponse, or an async iterator of events."""
        return await self._call(body, "aresponses")

    async def messages(self, body: dict[str, Any]) -> Any:
        """litellm's Anthropic Messages adapter: a Messages answer (dict), or an iterator of SSE bytes."""
        return await self._call(body, "anthropic_messages")

    async def _relay(self, stream: Any) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield b"data: " + orjson.dumps(chunk.model_dump(exclude_none=True)) + b"\n\n"
            yield b"data: [DONE]\n\n"
        except Exception as exc:
            yield stream_error_event(UpstreamError(f"the upstream stream broke: {exc}"))


def litellm_headers(response: Any) -> dict[str, str]:
    """The relayed upstream headers litellm kept on a response (provider headers are prefixed)."""
    hidden = getattr(response, "_hidden_params", None) or {}
    raw = hidden.get("additional_headers") or {}
    headers = {str(k).removeprefix("llm_provider-"): str(v) for k, v in raw.items()}
    return relayed_headers(headers)


class UpstreamRouter:
    """Chooses the path for a model name and resolves aliases. It owns the lean client of the
    OpenAI-compatible base, when one is set (`close` it)."""

    def __init__(
        self, settings: Settings, on_retry: Callable[[], None], tracing: Tracing = TRACING_OFF
    ) -> None:
        self._settings = settings
        self._on_retry = on_retry
        self._tracing = tracing
        self._client = lean_client(settings) if settings.upstream_api_base else None
        self._paths: dict[str, PassthroughUpstream] = {}
        self._raw: dict[tuple[str, tuple[tuple[str, str], ...]], LeanClient] = {}
        self._passthrough = self.passthrough("/chat/completions") if self._client is not None else None
        self._litellm: LitellmUpstream | None = None

    def passthrough(self, path: str) -> PassthroughUpstream:
        """The OpenAI-compatible base's `path` (one per path, sharing the connections)."""
        if self._client is None:
            raise UpstreamNotConfigured(
                f"no OpenAI-compatible upstream base is set: {UPSTREAM_SETTINGS_HINT}"
            )
        found = self._paths.get(path)
        if found is None:
            found = PassthroughUpstream(self._settings, self._client, self._on_retry, path, self._tracing)
            self._paths[path] = found
        return found

    def raw_client(self, base: str, auth_headers: dict[str, str]) -> LeanClient:
        """A lean client of `base` for the routes passed through (one per base and credentials, which
        are framed in: an Anthropic base may be the OpenAI-compatible one, under another key; the
        app's own headers go with each request)."""
        key = (base, tuple(auth_headers.items()))
        found = self._raw.get(key)
        if found is None:
            found = self._raw[key] = lean_client_for(self._settings, base, auth_headers)
        return found

    @property
    def tracing(self) -> Tracing:
        return self._tracing

    def close(self) -> None:
        for client in (self._client, *self._raw.values()):
            if client is not None:
                client.close()

    def litellm(self) -> LitellmUpstream:
        if self._litellm is None:
            self._litellm = LitellmUpstream(self._settings, self._on_retry)
        return self._litellm

    def route(self, requested_model: str) -> tuple[Upstream, str]:
        model = self._settings.upstream_model(requested_model)
        provider, _, rest = model.partition("/")
        mode = self._settings.upstream_mode
        wants_litellm = mode == "litellm" or (mode == "auto" and bool(rest) and provider in LITELLM_PROVIDERS)
        if self._passthrough is not None and not wants_litellm:
            return self._passthrough, rest if provider == "openai" and rest else model
        if not rest:
            self._require_configured(model)
        return self.litellm(), model

    def _require_configured(self, model: str) -> None:
        """A bare model name (no provider prefix) with neither an upstream base nor a key in the settings
        goes to litellm, which needs its provider's variables: without them, say what to set instead of
        passing on the provider library's error."""
        if self._settings.upstream_api_base or self._settings.upstream_api_key.get_secret_value():
            return
        missing = self.litellm().missing_settings(model)
        if missing is not None:
            looked_for = f"; litellm looked for {', '.join(missing)}" if missing else ""
            raise UpstreamNotConfigured(
                f"no upstream LLM is configured for model {model!r}: {UPSTREAM_SETTINGS_HINT}{looked_for}",
                param="model",
            )


def monotonic_ms(start: float) -> float:
    """Milliseconds since `start` (a time.perf_counter() reading)."""
    return (time.perf_counter() - start) * 1000.0


class ClientDisconnected(Exception):
    """The client went away before the answer was ready; the upstream call was cancelled."""


# A call still running after this long starts watching for its client going away. A real LLM call
# takes seconds, so an abandoned one is still cut short; a fast one never pays for the watching task.
WATCH_AFTER_S = 0.05


async def cancel_on_disconnect(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]], work: Awaitable[T]
) -> T:
    """Run `work`; if the client disconnects first, cancel it (which aborts the upstream request).

    `work` runs in the caller's own task. Once it has run `WATCH_AFTER_S`, one watcher task waits for
    the disconnect and cancels the caller (a task per call, and a second one for the work with
    `asyncio.wait` over both, cost more than a fast call's own Python)."""
    caller = asyncio.current_task()
    assert caller is not None
    loop = asyncio.get_running_loop()
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def wait_for_disconnect() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        caller.cancel()

    def watch() -> None:
        nonlocal watcher
        watcher = loop.create_task(wait_for_disconnect())

    timer = loop.call_later(WATCH_AFTER_S, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and caller.uncancel() == 0:  # our own cancel, nobody else's: the client went away
            raise ClientDisconnected() from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
