"""One error hierarchy. Every error the service reports is a `PersonaError`.

    PersonaError                      500 api_error
     ├── InvalidRequest               400 invalid_request_error
     │    ├── InvalidJSON             400
     │    ├── ForbiddenField          400  (api_base, base_url, api_key ... in a body)
     │    └── InvalidUserId           400
     ├── AuthenticationFailed         401 authentication_error
     ├── PermissionDenied             403 permission_error
     ├── NotFound                     404 not_found_error
     ├── Conflict                     409 conflict_error
     ├── PayloadTooLarge              413 invalid_request_error
     ├── RateLimited                  429 rate_limit_error     (quotas; carries retry-after)
     ├── ValidationFailed             422 invalid_request_error
     ├── NotEnoughData                422 invalid_request_error
     ├── StoreUnavailable             503 service_unavailable  (writes fail closed)
     ├── UpstreamNotConfigured        503 service_unavailable  (no LLM configured; not retried)
     ├── BudgetExceeded               500 api_error            (induction stopped cleanly)
     ├── LLMOutputError               502 upstream_error       (malformed structured output)
     └── UpstreamError                502 upstream_error (or the upstream's own 4xx/429 status)
          └── UpstreamTimeout         504 timeout_error

A single handler in `app.py` turns any of them into the OpenAI error shape
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any


class PersonaError(Exception):
    status_code: int = 500
    error_type: str = "api_error"
    code: str | None = None
    # Response headers that go out with the error (e.g. a retry-after, the upstream's x-request-id).
    headers: Mapping[str, str] = MappingProxyType({})

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status_code})"

    def to_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(PersonaError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class ForbiddenField(InvalidRequest):
    code = "forbidden_field"


class InvalidUserId(InvalidRequest):
    code = "invalid_user_id"


class AuthenticationFailed(PersonaError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(PersonaError):
    status_code = 403
    error_type = "permission_error"


class NotFound(PersonaError):
    status_code = 404
    error_type = "not_found_error"
    code = "not_found"


class Conflict(PersonaError):
    status_code = 409
    error_type = "conflict_error"
    code = "conflict"


class PayloadTooLarge(PersonaError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class RateLimited(PersonaError):
    """A quota refused the call; `headers` carries `retry-after` (whole seconds, at least 1)."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = max(1, int(-(-retry_after_s // 1)))
        self.headers = {"retry-after": str(self.retry_after_s)}


class ValidationFailed(PersonaError):
    status_code = 422
    error_type = "invalid_request_error"
    code = "validation_error"


class NotEnoughData(PersonaError):
    status_code = 422
    error_type = "invalid_request_error"
    code = "not_enough_data"


class StoreUnavailable(PersonaError):
    status_code = 503
    error_type = "service_unavailable"
    code = "store_unavailable"


class UpstreamNotConfigured(PersonaError):
    """No LLM to send the call to: the message names the settings to set. Clients are told not to
    retry (`x-should-retry: false`, honoured by the official OpenAI and Anthropic SDKs)."""

    status_code = 503
    error_type = "service_unavailable"
    code = "upstream_not_configured"
    headers = MappingProxyType({"x-should-retry": "false"})


class BudgetExceeded(PersonaError):
    code = "budget_exceeded"


class LLMOutputError(PersonaError):
    status_code = 502
    error_type = "upstream_error"
    code = "malformed_llm_output"


class UpstreamError(PersonaError):
    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    error_type = "timeout_error"
    code = "upstream_timeout"
