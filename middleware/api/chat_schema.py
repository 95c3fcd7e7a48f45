"""The chat completions request rule: one JSON Schema, published in OpenAPI and enforced on every call.

`validate_chat_body` checks a body against `CHAT_REQUEST_SCHEMA` itself (compiled once with
jsonschema-rs), so what the docs and the fuzzer see is exactly what is enforced. Fields not named here
pass through to the upstream untouched, except those that would redirect where the proxy sends its
credentials (`FORBIDDEN_FIELDS`, published as fields that must be absent).
"""

from __future__ import annotations

from typing import Any, get_args

import jsonschema_rs

from middleware.errors import ForbiddenField, ValidationFailed
from middleware.models import Role

ROLES: tuple[str, ...] = get_args(Role)
# Fields that would let a client choose where the proxy sends its credentials, or swap them.
FORBIDDEN_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "api_type",
        "organization",
        "custom_llm_provider",
        "extra_headers",
        "headers",
        "litellm_params",
        "proxy",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_region_name",
        "vertex_credentials",
        "vertex_project",
        "azure_ad_token",
        "mock_response",
        "user_config",
    }
)

CHAT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {
                    "role": {"type": "string", "enum": list(ROLES)},
                    "content": {"type": ["string", "array", "null"], "items": {"type": "object"}},
                },
            },
        },
        "stream": {"type": "boolean"},
        # each choice is a full answer the upstream bills: the tenant's `max_n` caps it (quotas)
        "n": {
            "type": "integer",
            "minimum": 1,
            "description": "at most the tenant's max_n (PERSONA_LIMITS, default 8); above it: 400 limit_exceeded",
        },
        "user": {"type": "string"},
        **{name: False for name in sorted(FORBIDDEN_FIELDS)},
    },
    "additionalProperties": True,
}
_VALIDATOR = jsonschema_rs.validator_for(CHAT_REQUEST_SCHEMA)
_TYPE_NAMES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}


def validate_chat_body(body: Any) -> dict[str, Any]:
    """`body` when it follows `CHAT_REQUEST_SCHEMA`, else the first rule it breaks as a clear error."""
    if isinstance(body, dict):
        forbidden = sorted(FORBIDDEN_FIELDS.intersection(body))
        if forbidden:
            raise ForbiddenField(
                f"field {forbidden[0]!r} is not allowed: the proxy decides where requests go",
                param=forbidden[0],
            )
        if _VALIDATOR.is_valid(body):
            return body
    raise _error(next(iter(_VALIDATOR.iter_errors(body))))


def _path(parts: list[str | int]) -> str | None:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _error(error: jsonschema_rs.ValidationError) -> ValidationFailed:
    kind = error.kind
    detail: dict[str, Any] = kind.as_dict()
    param = _path(list(error.instance_path))
    name = f"'{param}'" if param else "the request body"
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        missing = detail["property"]
        if param is None:
            return ValidationFailed(f"'{missing}' is required", param=str(missing))
        return ValidationFailed(f"{param} must have a '{missing}'", param=param)
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Type):
        types = " or ".join(_TYPE_NAMES.get(t, t) for t in detail["types"])
        return ValidationFailed(f"{name} must be {types}", param=param)
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Enum):
        return ValidationFailed(f"{name} must be one of: {', '.join(detail['options'])}", param=param)
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.MinItems):
        return ValidationFailed(f"{name} must be a non-empty array", param=param)
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.MinLength):
        return ValidationFailed(f"{name} must not be empty", param=param)
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Minimum):
        return ValidationFailed(f"{name} must be at least {detail['limit']}", param=param)
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Maximum):
        return ValidationFailed(f"{name} must be at most {detail['limit']}", param=param)
    return ValidationFailed(f"{name} is not valid here", param=param)
