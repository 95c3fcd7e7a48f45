"""Who is calling: app keys -> tenant, the admin key, and the end user's id.

An app key is found by the SHA-256 digest of what was sent (`Settings.tenant_of_app_key`: one lookup
however many keys are configured, and its time tells nothing about any key); the admin key is compared
in constant time. Keys are never logged.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from typing import Any

from middleware.config import Settings
from middleware.errors import AuthenticationFailed, InvalidRequest, InvalidUserId, PermissionDenied
from middleware.user_tokens import UserTokens, looks_like_user_token

# End-user ids are whatever the OpenAI/Anthropic SDKs accept as `user` / `safety_identifier` /
# `metadata.user_id` (auth0|..., emails, spaces, '/', '=', unicode). store/keys.py escapes them.
USER_ID_MAX_CHARS = 256
# Unicode's control characters (category Cc) and surrogates (Cs): one search, not a lookup per char.
REFUSED_IN_USER_IDS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
USER_HEADER = "x-persona-user"
SEGMENT_HEADER = "x-persona-segment"
# Segment names: a key part and a URL path segment as they are (no ':', braces, glob characters).
SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
TENANT_HEADER = "x-persona-tenant"


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if not value:
        return headers.get("api-key") or headers.get("x-api-key")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(candidate: str, secret: str) -> bool:
    return hmac.compare_digest(candidate.encode(), secret.encode())


def tenant_for_app_key(headers: Mapping[str, str], settings: Settings) -> str:
    """The tenant an app key belongs to. With no keys configured, everyone is the default tenant.

    Routes that take this (app keys only: the pass-through, a stored response's routes, minting user
    tokens) refuse an end-user token with a 403: it never reaches what the whole tenant shares."""
    token = bearer_token(headers)
    if token is not None and looks_like_user_token(token):
        raise PermissionDenied("user tokens cannot call this route", code="user_token_not_allowed")
    return _tenant_of_key(token, settings)


def _tenant_of_key(token: str | None, settings: Settings) -> str:
    """The tenant of the app key `token` (not a user token); with no keys configured, the default."""
    if not settings.api_keys:
        return settings.default_tenant
    if token is None:
        raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <app key>'")
    found = settings.tenant_of_app_key(token)
    if found is None:
        raise AuthenticationFailed("incorrect API key provided")
    return found


def is_admin(headers: Mapping[str, str], settings: Settings) -> bool:
    admin_key = settings.admin_key.get_secret_value()
    token = bearer_token(headers)
    if not admin_key:
        return settings.environment == "development"
    return token is not None and _matches(token, admin_key)


def tenant_for_admin(headers: Mapping[str, str], settings: Settings) -> str:
    """Admin routes: the global admin key, and the tenant named by X-Persona-Tenant."""
    refuse_user_token(headers)
    if bearer_token(headers) is None and settings.admin_key.get_secret_value():
        raise AuthenticationFailed("missing admin key: send 'Authorization: Bearer <admin key>'")
    if not is_admin(headers, settings):
        raise PermissionDenied("this route needs the admin key", code="admin_key_required")
    tenant = headers.get(TENANT_HEADER) or settings.default_tenant
    if not TENANT_RE.match(tenant):
        raise InvalidUserId(f"invalid tenant name in {TENANT_HEADER}", param=TENANT_HEADER)
    return tenant


def user_id_problem(user: Any) -> str | None:
    """Why `user` is not an acceptable end-user id, or None when it is."""
    if not isinstance(user, str):
        return "the end-user id must be a string"
    if not user:
        return "the end-user id is empty"
    if len(user) > USER_ID_MAX_CHARS:
        return f"the end-user id is longer than {USER_ID_MAX_CHARS} characters ({len(user)})"
    found = REFUSED_IN_USER_IDS.search(user)
    if found is None:
        return None
    char = found.group()
    kind = "an unpaired surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
    return f"the end-user id contains {kind} (U+{ord(char):04X})"


def validate_user_id(user: Any, *, param: str = "user") -> str:
    problem = user_id_problem(user)
    if problem is not None:
        raise InvalidUserId(
            f"invalid end-user id in {param!r}: {problem}; any other string of 1-{USER_ID_MAX_CHARS} "
            "characters is accepted",
            param=param,
        )
    result: str = user
    return result


def header_text(value: str) -> str:
    """A header value as the client meant it: servers decode headers as latin-1, clients send UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def end_user_id(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The end user a chat call is for: header, then `user`, `safety_identifier`, `metadata.user_id`."""
    header = headers.get(USER_HEADER)
    if header:
        return validate_user_id(header_text(header), param=USER_HEADER)
    for field in ("user", "safety_identifier"):
        value = body.get(field)
        if value:
            return validate_user_id(value, param=field)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        return validate_user_id(metadata["user_id"], param="metadata.user_id")
    return None


def validate_segment(segment: Any, *, param: str = "segment") -> str:
    if not isinstance(segment, str) or not SEGMENT_RE.match(segment):
        raise InvalidRequest(
            f"invalid segment name in {param!r}: 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit",
            param=param,
        )
    return segment


def request_segment(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The segment a chat call names for its user: the X-Persona-Segment header, else
    `metadata.segment`; None when it names none (the operator's assignment applies)."""
    header = headers.get(SEGMENT_HEADER)
    if header:
        return validate_segment(header.strip(), param=SEGMENT_HEADER)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("segment"):
        return validate_segment(metadata["segment"], param="metadata.segment")
    return None


# --- end-user tokens (middleware/user_tokens.py) ----------------------------------------------------
def app_caller(headers: Mapping[str, str], settings: Settings, tokens: UserTokens) -> tuple[str, str | None]:
    """The tenant of an app-facing call, and the end user a user token binds it to (None with an app
    key). A bearer that is a JWT is only ever checked as a user token, never as an app key."""
    token = bearer_token(headers)
    if token is not None and looks_like_user_token(token):
        claims = tokens.verify(token)
        return claims.tenant, claims.user
    return _tenant_of_key(token, settings), None


def bind_user(token_user: str | None, named: str | None, *, param: str = "user") -> str | None:
    """The user a call acts for: with a user token, its user, and naming anyone else is a 403."""
    if token_user is None:
        return named
    if named is not None and named != token_user:
        raise PermissionDenied(
            "a user token acts for its own user only", param=param, code="user_token_mismatch"
        )
    return token_user


def refuse_user_token(headers: Mapping[str, str]) -> None:
    """Routes for the app backend or operators only (admin, minting tokens) refuse user tokens."""
    token = bearer_token(headers)
    if token is not None and looks_like_user_token(token):
        raise PermissionDenied("user tokens cannot call this route", code="user_token_not_allowed")
