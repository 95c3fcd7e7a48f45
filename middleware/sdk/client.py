"""PersonalizedOpenAI / AsyncPersonalizedOpenAI: the official clients pointed at the proxy.

Every call carries the end user as the `X-Persona-User` header, so plain `chat.completions` calls are
personalized; `.comparisons`, `.preferences`, `.personas`, `.evaluations` and `.feedback` reach the proxy's own
routes. Errors are the openai package's own (`openai.NotFoundError`, `openai.ConflictError`, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import openai

from middleware.sdk.comparisons import AsyncComparisons, Comparisons
from middleware.sdk.evaluations import AsyncEvaluations, Evaluations
from middleware.sdk.feedback import AsyncFeedback, Feedback
from middleware.sdk.personas import AsyncPersonas, Personas
from middleware.sdk.preferences import AsyncPreferences, Preferences

USER_HEADER = "X-Persona-User"


def _proxy_options(
    base_url: str | None, api_key: Any, user: str | None, default_headers: Mapping[str, str] | None
) -> tuple[str | None, dict[str, Any]]:
    """The end user, and the openai client's options that point it at the proxy as that user."""
    user = user or (default_headers or {}).get(USER_HEADER)
    headers = dict(default_headers or {})
    if user:
        headers[USER_HEADER] = user
    options = {
        "base_url": base_url or os.environ.get("PERSONA_BASE_URL"),
        # A proxy in development mode needs no app key; the openai client insists on one.
        "api_key": api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or "no-key",
        "default_headers": headers,
    }
    return user, options


class PersonalizedOpenAI(openai.OpenAI):
    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: Any = None,
        user: str | None = None,
        admin_key: str | None = None,
        tenant: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        user, options = _proxy_options(base_url, api_key, user, default_headers)
        super().__init__(**options, **kwargs)
        self.persona_user = user
        self.admin_key = admin_key
        self.tenant = tenant
        self.comparisons = Comparisons(self)
        self.preferences = Preferences(self)
        self.personas = Personas(self)
        self.evaluations = Evaluations(self)
        self.feedback = Feedback(self)


class AsyncPersonalizedOpenAI(openai.AsyncOpenAI):
    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: Any = None,
        user: str | None = None,
        admin_key: str | None = None,
        tenant: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        user, options = _proxy_options(base_url, api_key, user, default_headers)
        super().__init__(**options, **kwargs)
        self.persona_user = user
        self.admin_key = admin_key
        self.tenant = tenant
        self.comparisons = AsyncComparisons(self)
        self.preferences = AsyncPreferences(self)
        self.personas = AsyncPersonas(self)
        self.evaluations = AsyncEvaluations(self)
        self.feedback = AsyncFeedback(self)
