"""Idempotency keys: the id a retried creation gets, and the fingerprint of what it asked for.

A creation that carries a key (`Idempotency-Key` header or `idempotency_key` field) gets an id derived
from the key and the scope it lives in (tenant, user, run), not a random one. A retry with the same key
after a timeout or a 503 therefore finds what the first attempt stored instead of storing it twice; the
fingerprint of the request is stored with it, so the same key sent with another request is refused.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from middleware.errors import InvalidRequest

MAX_KEY_CHARS = 256


def keyed_id(prefix: str, key: str, *scope: str) -> str:
    """`<prefix>_<32 hex>`: the same for the same key in the same scope, shaped like a random id."""
    digest = hashlib.sha256("\x00".join((*scope, key)).encode()).hexdigest()[:32]
    return f"{prefix}_{digest}"


def fingerprint(request: Any) -> str:
    """A digest of a request's parameters (JSON-able, key order ignored)."""
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()


def request_key(header: str | None, field: str | None) -> str | None:
    """The key of a request: its body field, else its header (empty means none)."""
    key = field if field is not None else header
    if key is not None and len(key) > MAX_KEY_CHARS:
        raise InvalidRequest(
            f"an idempotency key has at most {MAX_KEY_CHARS} characters", param="idempotency_key"
        )
    return key or None
