"""The one helper for structured LLM calls: a JSON-schema `response_format`, parsed with pydantic.

    parsed, usage = await structured_call(upstreams, model, messages, Answer, budget=budget)

- The schema sent is the pydantic model's JSON schema made "strict" (every property required, no
  extra properties), which OpenAI-compatible servers and litellm providers accept.
- A malformed answer (not JSON, or not valid for the schema) is retried up to `max_attempts` times,
  with a short note telling the model what was wrong; then `LLMOutputError` says so clearly.
- Every attempt is counted by a `CallBudget` (calls and tokens). The budget refuses a call *before*
  it is sent when the call could take it over its limits (`BudgetExceeded`), so a refresh stops
  cleanly instead of overspending.
Transport retries (429/5xx/connection) are the upstream's own business (`middleware.upstream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from middleware.errors import BudgetExceeded, LLMOutputError
from middleware.models import message_text
from middleware.upstream import UpstreamRouter

M = TypeVar("M", bound=BaseModel)
CHARS_PER_TOKEN = 4


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


class CallBudget:
    """Counts calls and tokens; refuses a call that could exceed either limit.

    A call reserves `estimate` tokens (its prompt plus the most it may generate) before it is sent,
    and settles to the real usage when it returns, so concurrent calls cannot overshoot together.
    """

    def __init__(self, max_calls: int, max_tokens: int) -> None:
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.used = Usage()
        self._reserved_calls = 0
        self._reserved_tokens = 0

    @property
    def remaining_calls(self) -> int:
        return self.max_calls - self.used.calls - self._reserved_calls

    def reserve(self, estimate: int) -> None:
        if self.used.calls + self._reserved_calls + 1 > self.max_calls:
            raise BudgetExceeded(
                f"LLM call budget exhausted ({self.max_calls} calls); stopped before exceeding it"
            )
        if self.used.total_tokens + self._reserved_tokens + estimate > self.max_tokens:
            raise BudgetExceeded(
                f"LLM token budget would be exceeded ({self.used.total_tokens} used, next call may "
                f"take {estimate}, limit {self.max_tokens}); stopped before exceeding it"
            )
        self._reserved_calls += 1
        self._reserved_tokens += estimate

    def settle(self, estimate: int, usage: Usage) -> None:
        self._reserved_calls -= 1
        self._reserved_tokens -= estimate
        self.used.add(usage)

    def snapshot(self) -> dict[str, int]:
        return {**self.used.as_dict(), "max_calls": self.max_calls, "max_tokens": self.max_tokens}


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with every object closed and every property required."""
    schema = copy.deepcopy(model.model_json_schema())

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                props = node.get("properties", {})
                node["additionalProperties"] = False
                node["required"] = list(props)
            node.pop("default", None)
            if isinstance(node.get("title"), str) and "type" in node:
                node.pop("title")
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for item in node:
                close(item)

    close(schema)
    return schema


def response_format(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": strict_schema(model), "strict": True},
    }


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    chars = sum(len(message_text(m)) for m in messages)
    return chars // CHARS_PER_TOKEN + 4 * len(messages)


def _content_and_usage(raw: bytes, messages: list[dict[str, Any]]) -> tuple[str | None, Usage]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, Usage(calls=1, prompt_tokens=estimate_tokens(messages))
    usage_data = data.get("usage") if isinstance(data, dict) else None
    usage = Usage(calls=1)
    if isinstance(usage_data, dict):
        usage.prompt_tokens = int(usage_data.get("prompt_tokens") or 0)
        usage.completion_tokens = int(usage_data.get("completion_tokens") or 0)
    else:
        usage.prompt_tokens = estimate_tokens(messages)
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None, usage
    if not isinstance(content, str) and content is not None:
        content = orjson.dumps(content).decode()
    if usage_data is None and content:
        usage.completion_tokens = len(content) // CHARS_PER_TOKEN
    return content, usage


async def structured_call(
    upstreams: UpstreamRouter,
    model: str,
    messages: list[dict[str, Any]],
    schema: type[M],
    *,
    budget: CallBudget,
    max_attempts: int = 3,
    max_completion_tokens: int = 800,
    temperature: float | None = 0.0,
    semaphore: asyncio.Semaphore | None = None,
) -> tuple[M, Usage]:
    """Ask `model` for an answer shaped like `schema`; return the parsed answer and the usage."""
    upstream, upstream_model = upstreams.route(model)
    fmt = response_format(schema)
    total = Usage()
    conversation = list(messages)
    problem = "no attempt made"
    for _attempt in range(max(1, max_attempts)):
        body: dict[str, Any] = {
            "model": upstream_model,
            "messages": conversation,
            "response_format": fmt,
            "max_tokens": max_completion_tokens,
        }
        if temperature is not None:
            body["temperature"] = temperature
        estimate = estimate_tokens(conversation) + max_completion_tokens
        async with semaphore if semaphore is not None else contextlib.nullcontext():
            # Reserved only once a concurrency slot is ours: waiting calls hold no budget.
            budget.reserve(estimate)
            usage = Usage(calls=1, prompt_tokens=estimate_tokens(conversation))
            try:
                raw = await upstream.complete(body)
                content, usage = _content_and_usage(raw, conversation)
            finally:
                budget.settle(estimate, usage)
                total.add(usage)
        if content is None:
            problem = "the answer had no message content"
        else:
            try:
                return schema.model_validate_json(content), total
            except ValidationError as exc:
                errors = exc.errors()
                problem = str(exc)
                if errors:
                    where = ".".join(str(p) for p in errors[0]["loc"])
                    problem = f"{where}: {errors[0]['msg']}"
        conversation = [
            *messages,
            {
                "role": "user",
                "content": "Your previous answer was not valid JSON for the required schema "
                f"({problem[:300]}). Answer again with only a JSON object matching the schema.",
            },
        ]
    raise LLMOutputError(
        f"{model} gave no valid {schema.__name__} answer in {max_attempts} attempts (last problem: "
        f"{problem[:300]})"
    )
