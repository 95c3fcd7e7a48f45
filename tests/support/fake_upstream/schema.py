"""JSON schema -> a minimal valid instance (the answer to a structured-output request)."""

from __future__ import annotations

import copy
from typing import Any

_STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "fake@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}


def _resolve_ref(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def schema_instance(schema: dict[str, Any], root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """Build a small instance that validates against ``schema`` (the common subset of JSON Schema)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 12:
        return None
    if "$ref" in schema:
        return schema_instance(_resolve_ref(schema["$ref"], root), root, depth + 1)
    if "const" in schema:
        return copy.deepcopy(schema["const"])
    if schema.get("enum"):
        return copy.deepcopy(schema["enum"][0])
    if "default" in schema and depth > 0:
        return copy.deepcopy(schema["default"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return schema_instance((non_null or options)[0], root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            part = _resolve_ref(part["$ref"], root) if "$ref" in part else part
            for k, v in part.items():
                if k == "properties":
                    merged.setdefault("properties", {}).update(v)
                elif k == "required":
                    merged.setdefault("required", []).extend(v)
                else:
                    merged.setdefault(k, v)
        return schema_instance(merged, root, depth + 1)

    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ is None:
        if "properties" in schema or "required" in schema:
            typ = "object"
        elif "items" in schema or "prefixItems" in schema:
            typ = "array"
        else:
            typ = "string"

    if typ == "object":
        props: dict[str, Any] = schema.get("properties", {})
        required = list(schema.get("required", []))
        obj: dict[str, Any] = {}
        for name in required:
            obj[name] = schema_instance(props.get(name, {}), root, depth + 1)
        min_props = schema.get("minProperties", 0)
        for name, sub in props.items():
            if len(obj) >= min_props:
                break
            obj.setdefault(name, schema_instance(sub, root, depth + 1))
        return obj
    if typ == "array":
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        n = max(int(schema.get("minItems", 0)), len(prefix))
        out: list[Any] = []
        for i in range(n):
            sub = prefix[i] if i < len(prefix) else (items if isinstance(items, dict) else {})
            value = schema_instance(sub, root, depth + 1)
            if i and isinstance(value, str):
                value = f"{value}{i}"
            elif i and isinstance(value, int | float) and not isinstance(value, bool):
                value = value + i if "maximum" not in sub else value
            out.append(value)
        return out
    if typ == "string":
        fmt = schema.get("format")
        text = _STRING_FORMATS.get(fmt, "fake") if isinstance(fmt, str) else "fake"
        min_len = int(schema.get("minLength", 0))
        if len(text) < min_len:
            text = text + "x" * (min_len - len(text))
        if "maxLength" in schema:
            text = text[: int(schema["maxLength"])]
        return text
    if typ in ("integer", "number"):
        return _number(schema, integer=typ == "integer")
    if typ == "boolean":
        return True
    if typ == "null":
        return None
    return None


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    xlo = schema.get("exclusiveMinimum")
    xhi = schema.get("exclusiveMaximum")
    step = 1 if integer else 0.5
    value: float
    if lo is not None:
        value = lo
    elif xlo is not None:
        value = xlo + step
    elif hi is not None and hi < 0:
        value = hi
    elif xhi is not None and xhi <= 0:
        value = xhi - step
    else:
        value = 0
    if xhi is not None and value >= xhi:
        value = (xhi + (xlo if xlo is not None else (lo if lo is not None else xhi - 2))) / 2
    if hi is not None and value > hi:
        value = hi
    multiple = schema.get("multipleOf")
    if multiple:
        value = -(-value // multiple) * multiple
    if integer:
        iv = int(value)
        if iv < value:
            iv += 1
        return iv
    return float(value)
