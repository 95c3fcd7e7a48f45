"""Every Redis key the service uses, built in one place.

All of one user's keys share the hash tag `{<tenant>:<user>}` so that they live on one Redis Cluster
slot and can be read in one round trip. Tenant names never contain ':' or braces. User ids may be
any string (see `middleware.identity`), so `user_tag` percent-escapes the characters that could end
the hash tag early or act as SCAN glob syntax (`%`, `{`, `}`, `*`, `?`, `[`, `]` and backslash): the mapping
is injective (two ids never share a key), the tag stays the whole `{tenant:user}` and SCAN patterns
match one user only. Ids without those characters keep the key they always had.

    pm:{t:u}:persona               current persona (JSON blob, a byte-for-byte copy of one version)
    pm:{t:u}:persona:v<N>          one persona version (JSON blob)
    pm:{t:u}:persona:versions      sorted set of version numbers
    pm:{t:u}:persona:seq           version counter
    pm:{t:u}:contexts              hash: `router` -> the context router, `c:<name>` -> the current
                                   persona of context <name>
    pm:{t:u}:contexts:heads        hash: the same fields, each with the first bytes of its value
                                   (its version id), written with it: what the chat path reads
    pm:{t:u}:contexts:names        set of the user's context names (every line ever stored)
    pm:{t:u}:ctx:<name>:v<N>       one context persona version (JSON blob)
    pm:{t:u}:ctx:<name>:versions   sorted set of the context's version numbers
    pm:{t:u}:ctx:<name>:seq        the context's version counter
    pm:{t:u}:prefs                 Stream of preference records (source of truth)
    pm:{t:u}:prefs:ids             set of preference ids already stored (idempotent writes)
    pm:{t:u}:comparisons:<id>      pending four-way comparison (TTL)
    pm:{t:u}:comparisons:<id>:claim   short lock while a judgement of it is being written
    pm:{t:u}:comparisons:<id>:judged  marker (TTL) that the comparison was judged: a second gets 409
    pm:{t:u}:sessions:<id>         best-only chat history of a collection session
    pm:{t:u}:adapter:v<N>          reranker adapter weights stored beside persona version N
    pm:{t:u}:meta                  small per-user counters (judgements since last refresh, ...)
    pm:{t:u}:job-lock              the user's running refresh (mutual exclusion, TTL)
    pm:{t:u}:job-pending           the user's queued/running refresh job id (deduplication)
    pm:{t:u}:jobs                  ids of the user's jobs (deleted with their records on forget)
    pm:{t:u}:policy                the user's auto-mode posteriors per arm (hash, see store/policy.py)
    pm:{t:u}:feedback:<id>         an answer's feedback record and its signals (hash, TTL)
    pm:{t:u}:feedback-prompt:<d>   answers to one prompt digest -> their latest verdict (hash, TTL)
    pm:{t:u}:sentiment             the user's smoothed follow-up sentiment (hash)
    pm:feedback-owner:<id>         answer id -> "tenant\nuser" (TTL), to find a record by id
    pm:comparison-owner:<id>       comparison id -> "tenant:user" (TTL), to find a comparison by id
    pm:tenant:<t>:users            set of user ids known in a tenant
    pm:response-owner:<id>         Responses API response id -> tenant that created it (TTL)
    pm:evaluations:<t>:<id>...     online evaluation runs (see evaluation_* below): the run, its
                                   trial ids (list), one hash per trial, per-user trial counters
    pm:jobs:...                    job records and tenant slots (middleware.store.jobs)
    pm:{policy:<t>}:arms           the tenant's auto-mode posteriors per arm (the new users' prior)

A tenant's segments, its operator-assigned memberships and its default persona share the hash tag
`{segments:<t>}`, so the chat path resolves user -> segment -> segment persona -> tenant default in
one script on one slot (docs/ARCHITECTURE.md "Segments"):

    pm:{segments:t}:index                   hash segment name -> JSON (name, description)
    pm:{segments:t}:members                 hash user id -> segment name (operator assignments)
    pm:{segments:t}:segment:<s>:persona...  the segment's persona line (as a user's: current,
                                            v<N>, versions, seq)
    pm:{segments:t}:default:persona...      the tenant's default persona line
    pm:{segments:t}:segment:<s>:job-...     the segment's pending refresh job and its lock
"""

from __future__ import annotations

import functools

PREFIX = "pm"
JOB_QUEUE = "pm:jobs:queue"


_USER_ESCAPES = str.maketrans({c: f"%{ord(c):02X}" for c in "%{}*?[]\\"})


def escape_user(user: str) -> str:
    """The user id as it appears inside a key (see the module docstring)."""
    return user.translate(_USER_ESCAPES)


def user_tag(tenant: str, user: str) -> str:
    return _user_tag(tenant, user)


@functools.lru_cache(maxsize=4096)  # a chat call builds several of a user's keys
def _user_tag(tenant: str, user: str) -> str:
    return f"{PREFIX}:{{{tenant}:{escape_user(user)}}}"


def user_pattern(tenant: str, user: str) -> str:
    """SCAN pattern matching every key under one user's hash tag."""
    return f"{user_tag(tenant, user)}:*"


# --- persona lines: a user's, a segment's, the tenant default's -------------------------------------
class PersonaLine(str):
    """The keys of one line of persona versions (a user's, a segment's or a tenant's default), named
    by their common prefix (the string itself): the current blob, the versions, their counter. The
    one spelling of these keys: the user's builders below (`persona_current`, ...) go through it."""

    __slots__ = ()

    @property
    def base(self) -> str:
        return str(self)

    @property
    def current(self) -> str:
        return f"{self.base}:persona"

    @property
    def version_prefix(self) -> str:
        """What every `version` key of the line starts with."""
        return f"{self.base}:persona:v"

    def version(self, version: int) -> str:
        return f"{self.version_prefix}{version}"

    @property
    def versions(self) -> str:
        return f"{self.base}:persona:versions"

    @property
    def seq(self) -> str:
        return f"{self.base}:persona:seq"

    def adapter(self, version: int) -> str:
        return f"{self.base}:adapter:v{version}"


def user_line(tenant: str, user: str) -> PersonaLine:
    return PersonaLine(user_tag(tenant, user))


def persona_current(tenant: str, user: str) -> str:
    return user_line(tenant, user).current


def persona_version(tenant: str, user: str, version: int) -> str:
    return user_line(tenant, user).version(version)


def persona_version_prefix(tenant: str, user: str) -> str:
    """What every `persona_version` key of the user starts with."""
    return user_line(tenant, user).version_prefix


def persona_versions(tenant: str, user: str) -> str:
    return user_line(tenant, user).versions


def persona_seq(tenant: str, user: str) -> str:
    return user_line(tenant, user).seq


def contexts(tenant: str, user: str) -> str:
    """Hash: `router` -> the router's centroids, `c:<name>` -> context <name>'s current persona."""
    return f"{user_tag(tenant, user)}:contexts"


def context_heads(tenant: str, user: str) -> str:
    """Hash: the same fields as `contexts`, each with the head of its value (`contexts.HEAD_BYTES`:
    where the version id is), written with it; what the chat path reads on every call."""
    return f"{user_tag(tenant, user)}:contexts:heads"


def context_names(tenant: str, user: str) -> str:
    return f"{user_tag(tenant, user)}:contexts:names"


def context_version(tenant: str, user: str, name: str, version: int) -> str:
    return f"{context_version_prefix(tenant, user, name)}{version}"


def context_version_prefix(tenant: str, user: str, name: str) -> str:
    """What every `context_version` key of one context line starts with."""
    return f"{user_tag(tenant, user)}:ctx:{name}:v"


def context_versions(tenant: str, user: str, name: str) -> str:
    return f"{user_tag(tenant, user)}:ctx:{name}:versions"


def context_seq(tenant: str, user: str, name: str) -> str:
    return f"{user_tag(tenant, user)}:ctx:{name}:seq"


def prefs(tenant: str, user: str) -> str:
    return f"{user_tag(tenant, user)}:prefs"


def pref_ids(tenant: str, user: str) -> str:
    return f"{user_tag(tenant, user)}:prefs:ids"


def comparison_prefix(tenant: str, user: str) -> str:
    """What every key of the user's comparisons starts with (`comparison`, its claim and judged
    markers, `pending_comparisons`)."""
    return f"{user_tag(tenant, user)}:comparisons:"


def comparison(tenant: str, user: str, comparison_id: str) -> str:
    return f"{comparison_prefix(tenant, user)}{comparison_id}"


def comparison_claim(tenant: str, user: str, comparison_id: str) -> str:
    return f"{comparison(tenant, user, comparison_id)}:claim"


def comparison_judged(tenant: str, user: str, comparison_id: str) -> str:
    return f"{comparison(tenant, user, comparison_id)}:judged"


def comparison_owner(comparison_id: str) -> str:
    return f"{PREFIX}:comparison-owner:{comparison_id}"


def session(tenant: str, user: str, session_id: str) -> str:
    return f"{user_tag(tenant, user)}:sessions:{session_id}"


def adapter(tenant: str, user: str, version: int) -> str:
    return user_line(tenant, user).adapter(version)


def user_meta(tenant: str, user: str) -> str:
    return f"{user_tag(tenant, user)}:meta"


def feedback_prefix(tenant: str, user: str) -> str:
    """What every `feedback` key of the user starts with (the answer id follows)."""
    return f"{user_tag(tenant, user)}:feedback:"


def feedback(tenant: str, user: str, response_id: str) -> str:
    """Hash: the answer's record (`record`), its signals (`s:<id>`), their pulls (`c:<id>`), `reward`."""
    return f"{feedback_prefix(tenant, user)}{response_id}"


def feedback_prompt(tenant: str, user: str, digest: str) -> str:
    """Hash: answer id -> its latest verdict (up, down, regenerate) among answers to one prompt."""
    return f"{user_tag(tenant, user)}:feedback-prompt:{digest}"


def sentiment(tenant: str, user: str) -> str:
    """Hash: the user's smoothed follow-up sentiment (`ewma`) and how many follow-ups made it (`n`)."""
    return f"{user_tag(tenant, user)}:sentiment"


def feedback_owner(response_id: str) -> str:
    return f"{PREFIX}:feedback-owner:{response_id}"


def response_owner(response_id: str) -> str:
    return f"{PREFIX}:response-owner:{response_id}"


def tenant_users(tenant: str) -> str:
    return f"{PREFIX}:tenant:{tenant}:users"


def evaluation(tenant: str, evaluation_id: str) -> str:
    return f"{PREFIX}:evaluations:{tenant}:{evaluation_id}"


def evaluation_trials(tenant: str, evaluation_id: str) -> str:
    return f"{PREFIX}:evaluations:{tenant}:{evaluation_id}:trials"


def evaluation_trial(tenant: str, evaluation_id: str, trial_id: str) -> str:
    return f"{PREFIX}:evaluations:{tenant}:{evaluation_id}:trial:{trial_id}"


def tenant_evaluations(tenant: str) -> str:
    return f"{PREFIX}:evaluations:{tenant}"


def evaluation_positions(tenant: str, evaluation_id: str) -> str:
    """Hash user -> number of trials given to the user (drives the balanced answer order)."""
    return f"{PREFIX}:evaluations:{tenant}:{evaluation_id}:positions"


def job_lock(tenant: str, user: str) -> str:
    return f"{user_tag(tenant, user)}:job-lock"


def job_record(job_id: str) -> str:
    return f"{PREFIX}:jobs:record:{job_id}"


def tenant_job_slots(tenant: str) -> str:
    return f"{PREFIX}:jobs:tenant-slots:{tenant}"


def job_pending(tenant: str, user: str) -> str:
    """The id of the user's queued or running persona refresh (one at a time per user)."""
    return f"{user_tag(tenant, user)}:job-pending"


def user_jobs(tenant: str, user: str) -> str:
    """Set of job ids ever enqueued for the user (so forgetting the user can delete their records)."""
    return f"{user_tag(tenant, user)}:jobs"


def tenant_pattern_users() -> str:
    """SCAN pattern matching every tenant's user index."""
    return f"{PREFIX}:tenant:*:users"


# --- quotas (middleware/quotas): one hash tag per tenant, so one script sees all of a tenant's keys --
def _limits_tag(tenant: str) -> str:
    return f"{PREFIX}:{{limits:{tenant}}}"


def rate_log(tenant: str) -> str:
    """List of the tenant's recent upstream-call times in ms, newest first (a moving-window log)."""
    return f"{_limits_tag(tenant)}:rpm"


def user_rate_log(tenant: str, user: str) -> str:
    """The same per end user (only times, no content; it expires a minute after the last call)."""
    return f"{_limits_tag(tenant)}:user:{escape_user(user)}:rpm"


def in_flight(tenant: str) -> str:
    """Sorted set of the tenant's in-flight request leases, scored by the time each lease expires."""
    return f"{_limits_tag(tenant)}:inflight"


def tokens_day(tenant: str, day: str) -> str:
    """Tokens the tenant used on one UTC day (YYYYMMDD), from the upstream's `usage`."""
    return f"{_limits_tag(tenant)}:tokens:{day}"


def pending_comparisons(tenant: str, user: str) -> str:
    """Sorted set of the user's pending comparison ids, scored by the time each one expires."""
    return f"{user_tag(tenant, user)}:comparisons:pending"


# --- the auto-mode policy (middleware/store/policy.py) ---------------------------------------------
def policy_user(tenant: str, user: str) -> str:
    """Hash of the user's discounted successes and failures, pulls and reward sums per arm."""
    return f"{user_tag(tenant, user)}:policy"


def _policy_tag(tenant: str) -> str:
    return f"{PREFIX}:{{policy:{tenant}}}"


def policy_tenant(tenant: str) -> str:
    """The same hash for the whole tenant (every user's rewards): the prior of a new user."""
    return f"{_policy_tag(tenant)}:arms"


# --- segments (middleware/store/segments.py): one hash tag per tenant -------------------------------
def segments_tag(tenant: str) -> str:
    return f"{PREFIX}:{{segments:{tenant}}}"


def segment_index(tenant: str) -> str:
    """Hash segment name -> JSON of the segment (name, description)."""
    return f"{segments_tag(tenant)}:index"


def segment_members(tenant: str) -> str:
    """Hash user id -> segment name: the operator's (or a learned) assignment of each user."""
    return f"{segments_tag(tenant)}:members"


def segment_base(tenant: str, segment: str) -> str:
    return f"{segments_tag(tenant)}:segment:{segment}"


def segment_line(tenant: str, segment: str) -> PersonaLine:
    return PersonaLine(segment_base(tenant, segment))


def segment_pattern(tenant: str, segment: str) -> str:
    """SCAN pattern matching every key of one segment (names never hold glob characters)."""
    return f"{segment_base(tenant, segment)}:*"


def tenant_default_line(tenant: str) -> PersonaLine:
    return PersonaLine(f"{segments_tag(tenant)}:default")


def segment_job_pending(tenant: str, segment: str) -> str:
    """The id of the segment's queued or running persona refresh (one at a time per segment)."""
    return f"{segment_base(tenant, segment)}:job-pending"


def segment_job_lock(tenant: str, segment: str) -> str:
    return f"{segment_base(tenant, segment)}:job-lock"
