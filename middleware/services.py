"""The long-lived objects one app (or worker) instance owns: each a typed field, built once in
`build_services` (the app's lifespan, the worker's start-up, a CLI command) and closed with it.

Routes and worker entry points read what they need from here and hand each function only the
collaborators it uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from redis.asyncio import Redis

from middleware.collection.service import ComparisonService
from middleware.config import Settings
from middleware.evaluation.online_service import EvaluationService
from middleware.feedback.answers import FeedbackRecorder
from middleware.feedback.signals import FeedbackService, RewardHook
from middleware.induction.adapters import AdapterTrainer
from middleware.induction.pipeline import Induction
from middleware.induction.queue import JobQueue
from middleware.metrics import Metrics
from middleware.personalize.policy import Policy
from middleware.personalize.resolve import Resolver
from middleware.personalize.service import Personalizer
from middleware.quotas.service import Quotas
from middleware.rerank.registry import RerankerRegistry
from middleware.rerank.resources import RerankResources
from middleware.store.comparisons import ComparisonStore
from middleware.store.connection import close_redis
from middleware.store.contexts import ContextStore
from middleware.store.evaluations import EvaluationStore
from middleware.store.feedback import FeedbackStore
from middleware.store.personas import PersonaStore
from middleware.store.policy import PolicyStore
from middleware.store.preferences import PreferenceStore
from middleware.store.response_owners import ResponseOwners
from middleware.store.segments import PersonaReader, SegmentStore
from middleware.store.users import UserIndex
from middleware.store.write_behind import WriteBehind
from middleware.tracing import TRACING_OFF, Tracing
from middleware.upstream import UpstreamRouter
from middleware.user_tokens import UserTokens


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: Redis
    # The job queue's Redis (PERSONA_JOBS_REDIS_URL); the same object as `redis` when it is the same.
    jobs_redis: Redis
    http: aiohttp.ClientSession
    metrics: Metrics
    personas: PersonaStore
    contexts: ContextStore
    preferences: PreferenceStore
    users: UserIndex
    personalizer: Personalizer
    policy: Policy
    resolver: Resolver
    segments: SegmentStore
    upstreams: UpstreamRouter
    quotas: Quotas
    user_tokens: UserTokens
    jobs: JobQueue
    rerankers: RerankerRegistry
    comparisons: ComparisonService
    evaluations: EvaluationService
    induction: Induction
    adapters: AdapterTrainer
    # Answers' feedback records (hot path) and the signals on them; `on_reward` is called when an
    # answer's reward changes (tenant, user, arm, reward).
    answers: FeedbackRecorder
    feedback: FeedbackService
    # Which tenant created each Responses API response id (recorded behind the answer).
    response_owners: ResponseOwners
    on_reward: RewardHook
    tracing: Tracing = TRACING_OFF
    # The hot path's own client (no socket timeout: its callers bound every command), when not `redis`.
    hot_redis: Redis | None = None

    async def close(self) -> None:
        await self.answers.drain()
        await self.http.close()
        self.upstreams.close()
        await self.redis.aclose()
        if self.hot_redis is not None:
            await close_redis(self.hot_redis)
        if self.jobs_redis is not self.redis:
            await self.jobs_redis.aclose()


def build_services(settings: Settings, tracing: Tracing = TRACING_OFF) -> Services:
    from middleware.store.connection import create_jobs_redis, create_redis
    from middleware.store.durable import Replication

    redis = create_redis(settings)
    jobs_redis = create_jobs_redis(settings, redis)
    replication = Replication(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
    metrics = Metrics()
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.upstream_max_connections, ttl_dns_cache=300),
        # Every tenant's calls share this session: an upstream's cookie must never follow one tenant's
        # call into another's (and filtering cookies on every request costs time besides).
        cookie_jar=aiohttp.DummyCookieJar(),
        # tracing on: an upstream.call span and its traceparent on every upstream request
        trace_configs=tracing.aiohttp_trace_configs() or None,
    )
    personas = PersonaStore(
        redis,
        read_timeout_s=settings.persona_read_timeout_s,
        breaker_s=settings.persona_read_breaker_s,
        replication=replication,
    )
    preferences = PreferenceStore(redis, replication)
    contexts = ContextStore(redis)
    personalizer = Personalizer(personas, settings, metrics, tracing)
    upstreams = UpstreamRouter(settings, metrics.upstream_retries.inc, tracing)
    # the writes after an answer (a call's tokens and slot, its feedback record): one round trip
    # The hot path's client: its reads and the write-behind run under their own asyncio timeouts,
    # so its connections need no socket timeout (`create_redis`).
    hot_redis = create_redis(settings, caller_timeouts=True)
    write_behind = WriteBehind(
        hot_redis, on_failure=metrics.store_write_failures.inc, timeout_s=settings.redis_socket_timeout_s
    )
    quotas = Quotas(settings, redis, metrics, tracing, write_behind, reads=hot_redis)
    feedback_store = FeedbackStore(redis, ttl_s=settings.feedback_ttl_s, write_behind=write_behind)
    policy = Policy(settings, PolicyStore(redis), metrics)
    on_reward: RewardHook = policy.on_reward  # rewards from /v1/feedback update the auto mode's policy
    rerankers = RerankerRegistry(settings, RerankResources(upstreams, personas)).load_entry_points()
    return Services(
        settings=settings,
        redis=redis,
        jobs_redis=jobs_redis,
        http=http,
        metrics=metrics,
        personas=personas,
        contexts=contexts,
        preferences=preferences,
        users=UserIndex(redis),
        personalizer=personalizer,
        policy=policy,
        resolver=Resolver(
            personalizer,
            PersonaReader(
                hot_redis,
                read_timeout_s=settings.persona_read_timeout_s,
                breaker_s=settings.persona_read_breaker_s,
            ),
        ),
        segments=SegmentStore(redis),
        upstreams=upstreams,
        quotas=quotas,
        user_tokens=UserTokens(settings),
        jobs=JobQueue(settings, redis, jobs_redis),
        rerankers=rerankers,
        comparisons=ComparisonService(
            ComparisonStore(redis, ttl_s=settings.comparison_ttl_s), personalizer, upstreams, preferences
        ),
        evaluations=EvaluationService(EvaluationStore(redis), personas, personalizer, upstreams, quotas),
        induction=Induction(settings, upstreams, personas, preferences, quotas, contexts),
        adapters=AdapterTrainer(settings, personas, preferences),
        answers=FeedbackRecorder(feedback_store, settings),
        response_owners=ResponseOwners(redis, settings.response_owner_ttl_s, write_behind),
        feedback=FeedbackService(settings, feedback_store, preferences, on_reward),
        on_reward=on_reward,
        tracing=tracing,
        hot_redis=hot_redis,
    )
