"""`PERSONA_LIMITS`: limits per tenant, with a default, merged field by field.

    PERSONA_LIMITS='{"default": {"requests_per_minute": 600, "max_n": 4},
                     "tenants": {"acme": {"requests_per_minute": 6000}}}'

acme gets 6000 requests per minute and `max_n` 4 (from the default); every other tenant 600 and 4.
A field left out everywhere is unlimited, except the caps `max_n`, `max_variants` and
`max_pending_comparisons`, which default to 8, 8 and 100 (also when `PERSONA_LIMITS` is unset).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MAX_N = 8
DEFAULT_MAX_VARIANTS = 8
DEFAULT_MAX_PENDING_COMPARISONS = 100


class LimitFields(BaseModel):
    """One tenant's entry (or the default): every field optional, None means "not set here"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Upstream calls per tenant in any 60-second window (a rerank or comparison counts each variant).
    requests_per_minute: int | None = Field(default=None, ge=1)
    # The same, per end user of the tenant.
    user_requests_per_minute: int | None = Field(default=None, ge=1)
    # Requests of the tenant in flight at once (streams count until they end).
    concurrency: int | None = Field(default=None, ge=1)
    # Prompt + completion tokens per UTC day, from the upstream's `usage`.
    tokens_per_day: int | None = Field(default=None, ge=1)
    max_n: int | None = Field(default=None, ge=1)
    # Caps max_tokens / max_completion_tokens / max_output_tokens.
    max_output_tokens: int | None = Field(default=None, ge=1)
    max_variants: int | None = Field(default=None, ge=2)
    # Pending (created, not yet judged, not expired) comparisons per end user.
    max_pending_comparisons: int | None = Field(default=None, ge=1)


class TenantLimits(BaseModel):
    """The limits in force for one tenant: unset rate limits are None (unlimited)."""

    model_config = ConfigDict(frozen=True)

    requests_per_minute: int | None = None
    user_requests_per_minute: int | None = None
    concurrency: int | None = None
    tokens_per_day: int | None = None
    max_n: int = DEFAULT_MAX_N
    max_output_tokens: int | None = None
    max_variants: int = DEFAULT_MAX_VARIANTS
    max_pending_comparisons: int = DEFAULT_MAX_PENDING_COMPARISONS

    @property
    def metered(self) -> bool:
        """Whether admitting a request needs Redis at all (any rate, concurrency or token limit)."""
        return any(
            v is not None
            for v in (
                self.requests_per_minute,
                self.user_requests_per_minute,
                self.concurrency,
                self.tokens_per_day,
            )
        )


class LimitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: LimitFields = Field(default_factory=LimitFields)
    tenants: dict[str, LimitFields] = Field(default_factory=dict)

    def for_tenant(self, tenant: str) -> TenantLimits:
        merged = self.default.model_dump(exclude_none=True)
        entry = self.tenants.get(tenant)
        if entry is not None:
            merged.update(entry.model_dump(exclude_none=True))
        return TenantLimits(**merged)


class LimitsTable:
    """Each tenant's merged limits, computed once per tenant."""

    def __init__(self, config: LimitsConfig | None) -> None:
        self._config = config or LimitsConfig()
        self._merged: dict[str, TenantLimits] = {}

    def __call__(self, tenant: str) -> TenantLimits:
        found = self._merged.get(tenant)
        if found is None:
            found = self._merged[tenant] = self._config.for_tenant(tenant)
        return found
