"""Settings: one pydantic-settings class, built once at start-up and passed in explicitly.

Every field can be set from the environment with the `PERSONA_` prefix, e.g.
`PERSONA_REDIS_URL=redis://127.0.0.1:6379/0`. Mapping fields take JSON:
`PERSONA_API_KEYS='{"sk-app-1": "acme"}'`.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from middleware.quota_policy import LimitsConfig

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "admin", "secret", "password"}


def _key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


QUANTIZE_MODES = ("off", "attention", "all")
FEEDBACK_SIGNALS = ("thumbs_up", "thumbs_down", "regenerate", "copy", "edit", "follow_up", "dwell")


def quantize_mode(value: bool | str | None) -> str:
    """Normalise an int8 setting of the `lora` encoder: off | attention | all (true means "attention")."""
    if value is None or value is False:
        return "off"
    if value is True:
        return "attention"
    mode = str(value).strip().lower()
    booleans = {
        "true": "attention",
        "1": "attention",
        "yes": "attention",
        "false": "off",
        "0": "off",
        "no": "off",
    }
    mode = booleans.get(mode, mode) or "off"
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, not {value!r}")
    return mode


# --- The auto mode's policy (README "Auto mode") ------------------------------------------------------
PERSONA_MODES = ("inject", "off", "rerank", "auto")
PLAIN_ARMS = ("off", "inject", "inject-no-exemplars")
DEFAULT_ARMS = ("off", "inject", "inject-no-exemplars", "rerank:judge")


def check_arm(arm: str) -> str:
    """An arm of the auto mode: off, inject, inject-no-exemplars, or rerank:<reranker>."""
    if arm in PLAIN_ARMS or (arm.startswith("rerank:") and len(arm) > len("rerank:")):
        return arm
    raise ValueError(f"an arm is one of {', '.join(PLAIN_ARMS)} or rerank:<reranker>, not {arm!r}")


class PolicyFields(BaseModel):
    """One tenant's entry of `PERSONA_POLICY` (or its default); None means "not set here"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The persona mode of a request without X-Persona-Mode.
    mode: Literal["inject", "off", "rerank", "auto"] | None = None
    # The arms `auto` chooses among.
    arms: list[str] | None = Field(default=None, min_length=1)
    # Each reward first multiplies the user's past successes and failures by this (all arms): memory of
    # about 1 / (1 - discount) rewards, so the policy follows a user whose taste changes.
    discount: float | None = Field(default=None, gt=0, le=1)
    # The same for the tenant's aggregate (the new users' prior).
    tenant_discount: float | None = Field(default=None, gt=0, le=1)
    # How many rewards the tenant's prior weighs for a new user (the tenant's posterior, scaled down).
    prior_strength: float | None = Field(default=None, ge=0)

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, arms: list[str] | None) -> list[str] | None:
        if arms is not None:
            arms = [check_arm(arm) for arm in arms]
            if len(set(arms)) != len(arms):
                raise ValueError("arms are listed once each")
        return arms


class TenantPolicy(BaseModel):
    """The policy in force for one tenant."""

    model_config = ConfigDict(frozen=True)

    mode: str = "inject"
    arms: tuple[str, ...] = DEFAULT_ARMS
    discount: float = 0.97
    tenant_discount: float = 0.999
    prior_strength: float = 4.0


class PolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: PolicyFields = Field(default_factory=PolicyFields)
    tenants: dict[str, PolicyFields] = Field(default_factory=dict)

    def for_tenant(self, tenant: str) -> TenantPolicy:
        merged = self.default.model_dump(exclude_none=True)
        entry = self.tenants.get(tenant)
        if entry is not None:
            merged.update(entry.model_dump(exclude_none=True))
        if "arms" in merged:
            merged["arms"] = tuple(merged["arms"])
        return TenantPolicy(**merged)


class Settings(BaseSettings):
    # Frozen: one value built at start-up; whoever holds it reads the same settings as everyone else.
    model_config = SettingsConfigDict(env_prefix="PERSONA_", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"

    # --- Redis -----------------------------------------------------------------------------------
    # redis:// or rediss:// (one server), redis+sentinel://h:p,h:p/<master>, redis+cluster://h:p,h:p
    # (see middleware/store/connection.py and docs/SCALING.md).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The job queue's Redis (arq); empty: the same as redis_url. A cluster is refused here.
    jobs_redis_url: str = ""
    # Writes that promise to survive a failover (preference writes, persona saves) wait until this
    # many replicas have them (WAIT); 0: no waiting (a server without replicas).
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 500
    redis_connect_timeout_s: float = 0.5
    redis_socket_timeout_s: float = 1.0
    redis_max_connections: int = 64
    # Start a local redis-server (data under data_dir) when `persona serve` finds none reachable.
    embedded_redis: bool = True
    data_dir: str = "./data"

    # --- Access ----------------------------------------------------------------------------------
    # app key -> tenant name. An empty mapping means "development: one tenant, no key needed".
    api_keys: dict[str, str] = Field(default_factory=dict)
    admin_key: SecretStr = SecretStr("")
    default_tenant: str = "default"

    # --- Upstream LLM ----------------------------------------------------------------------------
    upstream_api_base: str | None = None
    upstream_api_key: SecretStr = SecretStr("")
    # "auto": pass OpenAI-compatible upstreams straight through, litellm for any other provider.
    upstream_mode: Literal["auto", "passthrough", "litellm"] = "auto"
    # public model name -> upstream model name (e.g. {"gpt-4o": "openai/gpt-4o-2024-08-06"})
    model_aliases: dict[str, str] = Field(default_factory=dict)
    models: list[str] = Field(default_factory=list, description="extra names listed by /v1/models")
    upstream_connect_timeout_s: float = 5.0
    upstream_first_token_timeout_s: float = 60.0
    upstream_total_timeout_s: float = 600.0
    upstream_max_attempts: int = 3
    upstream_retry_initial_s: float = 0.2
    upstream_retry_max_s: float = 5.0
    upstream_max_connections: int = 512
    # Anthropic-compatible base for POST /v1/messages, as Anthropic's SDK takes it (the proxy appends
    # /v1/messages). Unset: /v1/messages is translated to the upstream above through litellm.
    anthropic_api_base: str | None = None
    anthropic_api_key: SecretStr = SecretStr("")
    # How long the proxy remembers which tenant created a Responses API response id.
    response_owner_ttl_s: int = 30 * 24 * 3600

    # --- Personalization -------------------------------------------------------------------------
    persona_max_chars: int = 2000
    exemplars_max: int = 3
    exemplar_max_chars: int = 1200
    persona_read_timeout_s: float = 0.05
    # After a failed persona read, chat calls skip the read (no persona) this long.
    persona_read_breaker_s: float = 0.5
    persona_cache_size: int = 10_000
    # Per-context personas (README "Contexts"): a context needs this many pairs for its own persona;
    # the router picks an untagged call's context when the cosine similarity of its last user turn
    # to the context's prompts reaches the threshold; at most this many contexts per user; untagged
    # pairs form contexts only when their clusters are separated by this margin.
    context_min_pairs: int = Field(default=5, ge=2)
    context_route_threshold: float = Field(default=0.2, ge=0.0, le=1.0)
    context_max: int = Field(default=10, ge=1, le=50)
    context_cluster_margin: float = Field(default=0.1, ge=0.0, le=1.0)

    # --- Feedback on answers (README "Feedback") -----------------------------------------------------
    # Write a feedback record per answer (off: answers still carry an id, feedback on them is a 404).
    feedback_records: bool = True
    # How long an answer's feedback record (x-persona-response-id) is kept.
    feedback_ttl_s: int = 7 * 24 * 3600
    # Keep the last user turn and the answer text in the record (implied preference pairs need them).
    feedback_keep_text: bool = False
    feedback_text_max_chars: int = 8000
    # Signal types POST /v1/feedback accepts; any other is a 422.
    feedback_signals: list[str] = Field(default_factory=lambda: list(FEEDBACK_SIGNALS))
    # Each signal's pull on an answer's reward: reward = 0.5 + 0.5 * sum(weight * value), within [0, 1];
    # value is 1 for a plain signal, the smoothed sentiment (-1..1) for follow_up, the dwell share.
    feedback_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "thumbs_up": 1.0,
            "thumbs_down": -1.0,
            "regenerate": -0.6,
            "copy": 0.4,
            "edit": -0.2,
            "follow_up": 0.5,
            "dwell": 0.2,
        }
    )
    # Seconds of dwell that count fully (value / this, capped at 1).
    feedback_dwell_full_s: float = 30.0
    # Share of a new follow-up's sentiment in the user's smoothed sentiment (EWMA, starts neutral).
    feedback_sentiment_alpha: float = 0.3
    # Weight of an implied (implicit) preference pair; explicit judgements weigh 1.
    feedback_implicit_weight: float = 0.5

    # --- Tracing (OpenTelemetry, configured by the standard OTEL_* variables: README "Tracing") -------
    # Put the end user's id on spans (enduser.id); off: spans never name a user.
    trace_user_ids: bool = False

    # --- Requests --------------------------------------------------------------------------------
    max_body_bytes: int = 4 * 1024 * 1024
    # Browser origins allowed by CORS (JSON list, e.g. ["https://app.example.com"]); none by default.
    cors_origins: list[str] = Field(default_factory=list)

    # --- Quotas and end-user tokens (README "Security") ---------------------------------------------
    # {"default": {...}, "tenants": {"<tenant>": {...}}}; unset: no rate limits, default caps only.
    limits: LimitsConfig | None = None
    # The auto mode and each tenant's default persona mode (README "Auto mode"):
    # {"default": {"mode": "auto", "arms": [...], "discount": 0.95}, "tenants": {"<tenant>": {...}}}.
    policy: PolicyConfig | None = None
    # A user's policy state expires this long after their last reward.
    policy_state_ttl_s: int = 180 * 86400
    # Rerankers `X-Persona-Reranker` may name; `lora` (loads torch) must be listed explicitly.
    rerankers_enabled: list[str] = Field(default_factory=lambda: ["judge"])
    # Signing keys of end-user tokens: a JSON list of secrets or a map kid -> secret. The first signs,
    # all verify (rotation). Unset: a per-process key in development; minting refused in production.
    user_token_keys: list[SecretStr] | dict[str, SecretStr] = Field(default_factory=list)

    # --- Induction and reranking -----------------------------------------------------------------
    induction_model: str = "gpt-4o-mini"
    induction_max_calls: int = 200
    induction_max_tokens: int = 400_000
    induction_concurrency: int = 4
    induction_min_pairs: int = 5
    auto_refresh_after: int = 0
    induction_validation_fraction: float = 0.3
    induction_exemplar_sets: int = 4
    induction_seed: int = 0
    # A segment's persona is induced from its members' pooled pairs, at most this many per member
    # (a seeded sample), so no single member dominates it.
    segment_pairs_per_member: int = Field(default=10, ge=1)
    induction_max_attempts: int = 3
    induction_max_completion_tokens: int = 800

    # --- Background jobs (arq workers) -----------------------------------------------------------
    jobs_timeout_s: float = 900.0
    jobs_in_progress_grace_s: float = 10.0
    jobs_max_attempts: int = 3
    jobs_retry_defer_s: float = 2.0
    jobs_tenant_concurrency: int = 2
    jobs_keep_s: int = 7 * 24 * 3600
    worker_max_jobs: int = 8
    worker_poll_s: float = 0.5
    auto_refresh_poll_s: float = 60.0
    reranker: str = "judge"
    judge_model: str | None = None
    comparison_ttl_s: int = 24 * 3600

    # --- The `lora` reranker (optional extra `persona-middleware[lora]`) ----------------------------
    lora_head_path: str | None = None
    lora_encoder_path: str | None = None
    lora_cache_size: int = 256
    lora_device: str | None = None
    lora_threads: int | None = None
    lora_max_context_tokens: int | None = None
    lora_quantize: Literal["off", "attention", "all"] = "all"
    lora_train_on_refresh: bool = True

    # --- Offline evaluation (`persona eval`) ------------------------------------------------------
    torch_threads: int = 2  # CPU threads of the global/lora scorers
    cache_dir: str = "var/cache"  # the scorers' cache of encoded texts

    @field_validator("lora_quantize", mode="before")
    @classmethod
    def _quantize_booleans(cls, value: bool | str | None) -> str:
        """`true`/`false` still work: true means the attention layers only."""
        return quantize_mode(value)

    @model_validator(mode="after")
    def _refuse_a_cluster_for_the_job_queue(self) -> Settings:
        if (self.jobs_redis_url or self.redis_url).lower().split("://", 1)[0].endswith("+cluster"):
            raise ValueError(
                "the job queue (arq) cannot run on a Redis Cluster: set PERSONA_JOBS_REDIS_URL to a "
                "standalone Redis (redis://...) or a Sentinel group (redis+sentinel://...) beside the "
                "cluster (see docs/SCALING.md)"
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production_defaults(self) -> Settings:
        if self.environment == "production":
            if self.admin_key.get_secret_value().lower() in PLACEHOLDER_SECRETS:
                raise ValueError("PERSONA_ADMIN_KEY must be set to a real secret in production")
            if not self.api_keys:
                raise ValueError("PERSONA_API_KEYS must map at least one app key in production")
        return self

    @cached_property
    def app_key_tenants(self) -> dict[bytes, str]:
        """The SHA-256 digest of each app key -> its tenant, built once (`tenant_of_app_key`)."""
        return {_key_digest(key): tenant for key, tenant in self.api_keys.items()}

    def tenant_of_app_key(self, token: str) -> str | None:
        """The tenant of the app key `token`, or None: one lookup by its digest however many keys
        there are, and the lookup's time depends on the digest of what was sent, which says nothing
        about any key."""
        return self.app_key_tenants.get(_key_digest(token))

    def public_models(self) -> list[str]:
        """The model names clients may ask for: configured models, then aliases, each once."""
        return list(dict.fromkeys([*self.models, *self.model_aliases]))

    def lora_wanted(self) -> bool:
        """Whether this server uses the `lora` reranker (its default reranker, or a head to load), so
        needs the `lora` extra (torch); `scripts/bootstrap.sh` installs the extra only then."""
        return self.reranker == "lora" or bool(self.lora_head_path)

    def upstream_model(self, requested: str) -> str:
        """The model name to send upstream for the one the client asked for."""
        return self.model_aliases.get(requested, requested)
