"""Pure ASGI path normalisation in front of the routers.

- A client whose `base_url` is the proxy root (no `/v1`) reaches the same routes: `/chat/completions`,
  `/responses`, `/embeddings`, ... are served as `/v1/...`.
- Admin routes address a user by the URL-encoded id in the path (`/admin/users/auth0%7C42/persona`,
  `/admin/users/u%2F42`). The server decodes `%2F` before routing, which would split the id, so
  the user segment is kept as the client encoded it and decoded once by `deps.UserPath`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

# First path segments of the OpenAI / Anthropic APIs that are also answered without `/v1`.
ROOT_API_SEGMENTS = frozenset(
    {
        "chat",
        "responses",
        "messages",
        "embeddings",
        "completions",
        "models",
        "moderations",
        "audio",
        "images",
        "files",
        "uploads",
        "batches",
        "vector_stores",
        "fine_tuning",
        "assistants",
        "threads",
        "conversations",
        "containers",
        "evals",
        "realtime",
    }
)
ADMIN_USERS = "/admin/users/"


class PathNormalizer:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/v1/"):
                pass
            elif path.startswith(ADMIN_USERS):
                scope = {**scope, "path": _raw_user_segment(scope, path)}
            else:
                first = path[1:].split("/", 1)[0]
                if first in ROOT_API_SEGMENTS:
                    raw = scope.get("raw_path")
                    scope = {
                        **scope,
                        "path": "/v1" + path,
                        "raw_path": b"/v1" + raw if isinstance(raw, bytes) else raw,
                    }
        await self.app(scope, receive, send)


def _raw_user_segment(scope: dict[str, Any], path: str) -> str:
    """`path` with the user segment as sent on the wire (still percent-encoded)."""
    raw = scope.get("raw_path")
    prefix = ADMIN_USERS.encode()
    if isinstance(raw, bytes) and raw.startswith(prefix):
        segment, slash, rest = raw[len(prefix) :].partition(b"/")
        tail = unquote(rest.decode("latin-1")) if slash else ""
        return ADMIN_USERS + segment.decode("latin-1") + ("/" + tail if slash else "")
    # No raw path (some in-process transports): the decoded id cannot contain '/', encode it back.
    user, sep, tail = path[len(ADMIN_USERS) :].partition("/")
    return ADMIN_USERS + quote(user, safe="") + (sep + tail)
