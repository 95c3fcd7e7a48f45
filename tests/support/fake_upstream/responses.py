"""Reply building: what each choice says, and the completion, error and embedding bodies."""

from __future__ import annotations

import copy
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from tests.support.fake_upstream.models import MODELS, Reply
from tests.support.fake_upstream.schema import schema_instance


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def default_content(body: dict[str, Any]) -> str:
    """``"fake answer to: <last user message text>"``."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return f"fake answer to: {_text_of(message.get('content'))}"
    return "fake answer"


def _count_tokens(body: dict[str, Any]) -> int:
    total = 0
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            total += 4 + len(_text_of(message.get("content")).split())
    return max(total, 1)


_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    408: ("timeout", None),
    409: ("conflict_error", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "overloaded"),
    504: ("timeout", None),
}


def error_body(status: int, message: str | None = None, error_type: str | None = None) -> bytes:
    mapped_type, code = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return orjson.dumps(
        {
            "error": {
                "message": message or f"fake upstream error {status}",
                "type": error_type or mapped_type,
                "param": None,
                "code": code,
            }
        }
    )


@dataclass
class Plan:
    """A resolved reply: what each choice says."""

    contents: list[str | None]
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    reply: Reply


def plan_reply(body: dict[str, Any], reply: Reply | None) -> Plan:
    reply = reply or Reply()
    n = body.get("n") or 1
    try:
        n = max(1, int(n))
    except (TypeError, ValueError):
        n = 1
    tool_calls: list[dict[str, Any]] | None = None
    if reply.tool_calls:
        tool_calls = []
        for call in reply.tool_calls:
            args = call.get("arguments", "{}")
            if not isinstance(args, str):
                args = orjson.dumps(args).decode()
            tool_calls.append(
                {
                    "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": args},
                }
            )
    is_json = False
    content: str | None
    if reply.json is not None:
        content, is_json = orjson.dumps(reply.json).decode(), True
    elif reply.content is not None:
        content = reply.content
    elif tool_calls:
        content = None
    else:
        fmt = body.get("response_format") or {}
        ftype = fmt.get("type") if isinstance(fmt, dict) else None
        if ftype == "json_schema":
            spec = fmt.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            content, is_json = orjson.dumps(schema_instance(schema or {"type": "object"})).decode(), True
        elif ftype == "json_object":
            content, is_json = "{}", True
        else:
            content = default_content(body)
    contents: list[str | None] = []
    for i in range(n):
        if content is None or is_json or i == 0:
            contents.append(content)
        else:
            contents.append(f"{content} #{i}")
    finish = reply.finish_reason or ("tool_calls" if tool_calls else "stop")
    return Plan(contents=contents, tool_calls=tool_calls, finish_reason=finish, reply=reply)


def usage(body: dict[str, Any], plan: Plan) -> dict[str, int]:
    prompt = _count_tokens(body)
    completion = 0
    for c in plan.contents:
        completion += len((c or "").split())
    if plan.tool_calls:
        completion += sum(len(tc["function"]["arguments"]) // 4 + 1 for tc in plan.tool_calls) * len(
            plan.contents
        )
    completion = max(completion, 1)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_json(body: dict[str, Any], plan: Plan, completion_id: str, created: int) -> dict[str, Any]:
    choices = []
    for i, content in enumerate(plan.contents):
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if plan.tool_calls:
            message["tool_calls"] = copy.deepcopy(plan.tool_calls)
        choices.append(
            {"index": i, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.get("model") or MODELS[0],
        "choices": choices,
        "usage": usage(body, plan),
        "system_fingerprint": "fp_fake",
    }


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def embeddings_body(body: dict[str, Any]) -> bytes:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    data = []
    for i, item in enumerate(items):
        text = str(item)
        vec = [((zlib.crc32(f"{k}:{text}".encode()) % 2000) - 1000) / 1000.0 for k in range(8)]
        data.append({"object": "embedding", "index": i, "embedding": vec})
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": body.get("model") or MODELS[0],
            "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
        }
    )
