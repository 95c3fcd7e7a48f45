"""The auto mode: a Thompson-sampling policy per user that picks how to personalize each answer.

Arms (per tenant, `PERSONA_POLICY`): `off` (no persona), `inject` (the persona block), `inject-no-
exemplars` (the block without its exemplars) and `rerank:<reranker>` (rerank mode with that
reranker). Each arm's reward is a Beta-Bernoulli posterior with fractional rewards in [0, 1]: a
reward r adds r to the arm's successes and 1 - r to its failures, after every arm's past sums of the
user were multiplied by the tenant's `discount` (README "Auto mode"; discounted Thompson sampling), so
the policy keeps exploring a little and follows a user whose taste changes.

A user's prior is the tenant's posterior (every user's rewards, discounted by `tenant_discount`)
scaled down to `prior_strength` rewards: a new user starts from what works for the tenant, and their
own rewards soon outweigh it. For each request one draw per arm from Beta(prior + the user's sums),
the highest draw wins. The posteriors are read in the pipeline that reads the persona (no extra
round trip); a failed read chooses the tenant's fallback arm (`inject` when it is an arm).
"""

from __future__ import annotations

import logging
import random
from typing import Any, NamedTuple

from middleware.config import PolicyConfig, Settings, TenantPolicy, check_arm
from middleware.metrics import Metrics
from middleware.store.policy import ArmStats, PolicyStore, Posteriors

log = logging.getLogger("middleware.policy")
RERANK_PREFIX = "rerank:"


class Arm(NamedTuple):
    """What an arm does to a request."""

    name: str
    mode: str  # "off" | "inject" | "rerank": the persona mode it runs as
    exemplars: bool = True  # whether the injected block shows the persona's exemplars
    reranker: str | None = None  # rerank: the reranker it names

    @classmethod
    def of(cls, name: str) -> Arm:
        check_arm(name)
        if name.startswith(RERANK_PREFIX):
            return cls(name, "rerank", True, name[len(RERANK_PREFIX) :])
        if name == "inject-no-exemplars":
            return cls(name, "inject", exemplars=False)
        return cls(name, name)


class Policy:
    def __init__(
        self, settings: Settings, store: PolicyStore, metrics: Metrics, rng: random.Random | None = None
    ) -> None:
        self.store = store
        self._settings = settings
        self._config = settings.policy or PolicyConfig()
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._tenants: dict[str, TenantPolicy] = {}
        self._arms: dict[tuple[str, bool], tuple[Arm, ...]] = {}

    def of(self, tenant: str) -> TenantPolicy:
        found = self._tenants.get(tenant)
        if found is None:
            found = self._tenants[tenant] = self._config.for_tenant(tenant)
        return found

    def default_mode(self, tenant: str) -> str:
        """The persona mode of the tenant's requests that name none."""
        return self.of(tenant).mode

    def arms(self, tenant: str, *, rerank: bool = True) -> tuple[Arm, ...]:
        """The tenant's arms this route can run: rerank arms only where the route reranks and the
        reranker is enabled (`PERSONA_RERANKERS_ENABLED`)."""
        found = self._arms.get((tenant, rerank))
        if found is None:
            enabled = set(self._settings.rerankers_enabled)
            found = tuple(
                arm
                for arm in map(Arm.of, self.of(tenant).arms)
                if arm.reranker is None or (rerank and arm.reranker in enabled)
            ) or (Arm.of("inject"),)
            self._arms[(tenant, rerank)] = found
        return found

    def priors(self, tenant: str, tenant_posteriors: Posteriors) -> dict[str, tuple[float, float]]:
        """(alpha, beta) of a user without rewards, per arm: Beta(1, 1) moved toward the tenant's mean
        reward of the arm by at most `prior_strength` rewards."""
        strength = self.of(tenant).prior_strength
        priors: dict[str, tuple[float, float]] = {}
        for arm in self._shown_arms(tenant, tenant_posteriors):
            stats = tenant_posteriors.get(arm, ArmStats())
            seen = stats.successes + stats.failures
            weight = min(strength, seen)
            mean = stats.successes / seen if seen > 0 else 0.5
            priors[arm] = (1.0 + weight * mean, 1.0 + weight * (1.0 - mean))
        return priors

    def choose(
        self,
        tenant: str,
        posteriors: tuple[Posteriors, Posteriors] | None,
        *,
        rerank: bool = True,
    ) -> Arm:
        """One arm for a request: a Thompson draw over (user's, tenant's) posteriors, or, when they
        could not be read, the fallback arm. Counted in `persona_policy_arm_total{arm}`."""
        arms = self.arms(tenant, rerank=rerank)
        if posteriors is None:
            chosen = next((a for a in arms if a.name == "inject"), arms[0])
        else:
            user, tenant_wide = posteriors
            priors = self.priors(tenant, tenant_wide)
            best, chosen = -1.0, arms[0]
            for arm in arms:
                alpha, beta = priors.get(arm.name, (1.0, 1.0))
                own = user.get(arm.name, ArmStats())
                draw = self._rng.betavariate(alpha + own.successes, beta + own.failures)
                if draw > best:
                    best, chosen = draw, arm
        self._metrics.policy_arms.labels(chosen.name).inc()
        return chosen

    async def reward(
        self, tenant: str, user: str, arm: str, reward: float, *, previous: float | None = None
    ) -> None:
        """One reward in [0, 1] for the answer an arm gave the user: the user's and the tenant's
        posteriors, updated atomically. With `previous` (the answer's reward before a later signal
        changed it) the new reward replaces that one instead of counting as another pull. Store
        faults raise StoreUnavailable (503)."""
        check_arm(arm)
        for value in (reward, previous):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"a reward is in [0, 1], not {value}")
        policy = self.of(tenant)
        await self.store.reward(
            tenant,
            user,
            arm,
            float(reward),
            discount=policy.discount,
            tenant_discount=policy.tenant_discount,
            ttl_ms=self._settings.policy_state_ttl_s * 1000,
            previous=None if previous is None else float(previous),
        )

    async def on_reward(
        self, tenant: str, user: str, arm: str, reward: float, previous: float | None = None
    ) -> None:
        """The feedback service's hook: an answer's reward changed (`previous`: its reward before, None
        for its first). An arm the policy does not know (an answer's mode that is no arm) is skipped."""
        try:
            check_arm(arm)
        except ValueError:
            log.info("reward for %r not counted: not an arm of the auto mode", arm)
            return
        await self.reward(
            tenant, user, arm, _clamp(reward), previous=None if previous is None else _clamp(previous)
        )

    # --- what the admin routes show -----------------------------------------------------------------
    def _shown_arms(self, tenant: str, *posteriors: Posteriors) -> list[str]:
        names = [arm for arm in self.of(tenant).arms]
        for found in posteriors:
            names.extend(arm for arm in found if arm not in names)
        return names

    async def describe_user(self, tenant: str, user: str) -> dict[str, Any]:
        mine = await self.store.user_posteriors(tenant, user)
        tenant_wide = await self.store.tenant_posteriors(tenant)
        priors = self.priors(tenant, tenant_wide)
        arms = {}
        for name in self._shown_arms(tenant, mine, tenant_wide):
            alpha0, beta0 = priors.get(name, (1.0, 1.0))
            arms[name] = _arm_view(mine.get(name, ArmStats()), alpha0, beta0)
        return {"user": user, **self._header(tenant), "arms": arms}

    async def describe_tenant(self, tenant: str) -> dict[str, Any]:
        tenant_wide = await self.store.tenant_posteriors(tenant)
        arms = {
            name: _arm_view(tenant_wide.get(name, ArmStats()), 1.0, 1.0)
            for name in self._shown_arms(tenant, tenant_wide)
        }
        return {**self._header(tenant), "arms": arms}

    def _header(self, tenant: str) -> dict[str, Any]:
        policy = self.of(tenant)
        return {
            "tenant": tenant,
            "mode": policy.mode,
            "arms_configured": list(policy.arms),
            "discount": policy.discount,
            "tenant_discount": policy.tenant_discount,
            "prior_strength": policy.prior_strength,
        }


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


def _arm_view(stats: ArmStats, alpha0: float, beta0: float) -> dict[str, Any]:
    alpha, beta = alpha0 + stats.successes, beta0 + stats.failures
    return {
        "alpha": round(alpha, 6),
        "beta": round(beta, 6),
        "posterior_mean": round(alpha / (alpha + beta), 6),
        "prior": {"alpha": round(alpha0, 6), "beta": round(beta0, 6)},
        "pulls": stats.pulls,
        "mean_reward": round(stats.reward_sum / stats.pulls, 6) if stats.pulls else None,
    }
