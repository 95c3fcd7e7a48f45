"""Limits every JSON document the service accepts or stores must keep: nesting depth and integer range.

JSON nested deeper than `MAX_DEPTH` or holding an integer outside the signed 64-bit range is refused
with a 400 before any route runs (and before anything is stored), so no later parse, validation,
serialization or read of a stored record can fail on it. Bodies are parsed once with orjson (which
also refuses invalid UTF-8, lone surrogates, NaN and infinities); the exact depth walk and integer
scan only run when the raw bytes make them possible (more than `MAX_DEPTH` brackets, 19 digits),
so an ordinary request pays one C-speed parse and two byte counts.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from middleware.errors import InvalidJSON, InvalidRequest

MAX_DEPTH = 64
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_LONG_DIGITS = re.compile(rb"\d{19}")
_DIGITS = b"0123456789"


class JSONTooDeep(InvalidRequest):
    code = "json_too_deep"


class IntegerOutOfRange(InvalidRequest):
    code = "integer_out_of_range"


class InvalidEncoding(InvalidRequest):
    code = "invalid_encoding"


def check_body(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The decoded body; a 400 `InvalidRequest` unless `raw` is UTF-8 JSON within the depth and
    integer limits."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise InvalidEncoding(f"the request body is not valid UTF-8 (byte {bad.start})") from None
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            raise _too_deep(max_depth) from None
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        check_value(value, max_depth=max_depth)
    # Counting digits (one C pass) is far cheaper than the regex, which runs only when 19 could be in a row.
    if len(raw) - len(raw.translate(None, _DIGITS)) >= 19 and _LONG_DIGITS.search(raw):
        # orjson reads integers beyond 64 bits as floats: the exact check reads every integer literal.
        json.loads(raw, parse_int=_checked_int)
    return value


def check_value(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """The same limits for a decoded value (a record about to be stored)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            if isinstance(node, int) and not isinstance(node, bool):
                _checked_int(node)
            continue
        if depth >= max_depth:
            raise _too_deep(max_depth)
        stack.extend((child, depth + 1) for child in children)


def _checked_int(literal: str | int) -> int:
    number = int(literal)
    if not INT_MIN <= number <= INT_MAX:
        raise IntegerOutOfRange("an integer in the request is outside the signed 64-bit range")
    return number


def _too_deep(max_depth: int) -> JSONTooDeep:
    return JSONTooDeep(f"the JSON document is nested deeper than {max_depth} levels")
