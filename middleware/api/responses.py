"""JSON responses serialized once with orjson."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse


class JSONBytes(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:
            # orjson refuses integers beyond 64 bits, which stored user data may hold.
            return json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def job_accepted(job_id: str, created: bool) -> JSONBytes:
    """202 for a queued background job (or the pending one it was folded into)."""
    return JSONBytes(
        {
            "job_id": job_id,
            "state": "queued",
            "deduplicated": not created,
            "status_url": f"/admin/jobs/{job_id}",
        },
        status_code=202,
    )
