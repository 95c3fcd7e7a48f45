"""The auto mode's posteriors in Redis: one hash per user, one per tenant, updated by a Lua script.

Each hash holds, per arm, four fields: `<arm>:s` and `<arm>:f`, the discounted sums of rewards and of
their complements (1 - reward), which make the arm's Beta posterior; `<arm>:n`, the rewards received
(pulls that were rewarded), and `<arm>:r`, their plain sum (mean reward = r / n). A reward runs the
UPDATE script once on the user's hash and once on the tenant's: each script touches one key, so one
hash slot, and applies the discount and the reward at once, so rewards arriving together through
several proxy processes are never lost. Both scripts go in one pipeline (one round trip).

The chat path reads both hashes in the pipeline that already reads the persona
(`RateLimitStore.admit_and_read`, or `PersonaReader.read` when the tenant is not metered, both with
`policy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from middleware.store import keys
from middleware.store.guard import fail_closed
from middleware.store.pipelines import Command, as_dict

# KEYS[1]: a posterior hash. ARGV: discount, arm, reward in [0, 1], ttl in ms (0: none), and the
# reward this one replaces ("" for a new one). A new reward: every arm's discounted sums are multiplied
# by the discount, then the reward is added to the arm (one more pull). A replaced reward (the same
# answer got another signal): only the difference moves the arm's sums (no decay, no pull).
UPDATE = """
local discount = tonumber(ARGV[1])
local arm = ARGV[2]
local reward = tonumber(ARGV[3])
local previous = tonumber(ARGV[5])
if previous ~= nil then
  local delta = reward - previous
  local s = tonumber(redis.call('HGET', KEYS[1], arm .. ':s') or '0') + delta
  local f = tonumber(redis.call('HGET', KEYS[1], arm .. ':f') or '0') - delta
  redis.call('HSET', KEYS[1], arm .. ':s', string.format('%.12f', math.max(0, s)),
    arm .. ':f', string.format('%.12f', math.max(0, f)))
  redis.call('HINCRBYFLOAT', KEYS[1], arm .. ':r', string.format('%.12f', delta))
  if redis.call('HEXISTS', KEYS[1], arm .. ':n') == 0 then redis.call('HSET', KEYS[1], arm .. ':n', 1) end
else
  if discount < 1 then
    local fields = redis.call('HGETALL', KEYS[1])
    local decayed = {}
    for i = 1, #fields, 2 do
      local kind = string.sub(fields[i], -2)
      if kind == ':s' or kind == ':f' then
        decayed[#decayed + 1] = fields[i]
        decayed[#decayed + 1] = string.format('%.12f', tonumber(fields[i + 1]) * discount)
      end
    end
    if #decayed > 0 then redis.call('HSET', KEYS[1], unpack(decayed)) end
  end
  redis.call('HINCRBYFLOAT', KEYS[1], arm .. ':s', string.format('%.12f', reward))
  redis.call('HINCRBYFLOAT', KEYS[1], arm .. ':f', string.format('%.12f', 1 - reward))
  redis.call('HINCRBY', KEYS[1], arm .. ':n', 1)
  redis.call('HINCRBYFLOAT', KEYS[1], arm .. ':r', string.format('%.12f', reward))
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""


class ArmStats(NamedTuple):
    successes: float = 0.0  # discounted sum of rewards
    failures: float = 0.0  # discounted sum of 1 - reward
    pulls: int = 0  # rewards received
    reward_sum: float = 0.0  # their plain sum


Posteriors = dict[str, ArmStats]


def parse(raw: dict[Any, Any] | list[Any] | None) -> Posteriors:
    """A posterior hash as read (bytes or str fields; a dict, or HGETALL's flat reply) -> stats per arm."""
    found: dict[str, dict[str, float]] = {}
    for name, value in as_dict(raw).items():
        field = name.decode() if isinstance(name, bytes) else str(name)
        arm, _, kind = field.rpartition(":")
        try:
            found.setdefault(arm, {})[kind] = float(value)
        except ValueError:
            continue
    return {
        arm: ArmStats(v.get("s", 0.0), v.get("f", 0.0), int(v.get("n", 0)), v.get("r", 0.0))
        for arm, v in found.items()
    }


def policy_read_commands(tenant: str, user: str) -> list[Command]:
    """The reads of the user's and the tenant's posteriors; their replies, in this order, are read by
    `posteriors_of`."""
    return [("HGETALL", keys.policy_user(tenant, user)), ("HGETALL", keys.policy_tenant(tenant))]


def posteriors_of(replies: Sequence[Any], at: int) -> tuple[Posteriors, Posteriors]:
    """What `policy_read_commands` found: the user's and the tenant's posteriors, its replies from
    `replies[at]` on."""
    return parse(replies[at]), parse(replies[at + 1])


class PolicyStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._update = redis.register_script(UPDATE)

    async def reward(
        self,
        tenant: str,
        user: str,
        arm: str,
        reward: float,
        *,
        discount: float,
        tenant_discount: float,
        ttl_ms: int,
        previous: float | None = None,
    ) -> None:
        """Add one reward to the user's and the tenant's posteriors (two scripts, one round trip).
        A store fault is StoreUnavailable (503); a reward is not idempotent here, a caller that may
        retry deduplicates first. `previous`: the reward of the same answer this one replaces."""
        replaced = "" if previous is None else repr(previous)
        updates = [
            (keys.policy_user(tenant, user), discount, ttl_ms),
            (keys.policy_tenant(tenant), tenant_discount, 0),
        ]
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            for key, factor, ttl in updates:
                # execute_command: redis-py's cluster pipeline blocks its evalsha() method, not the command
                pipe.execute_command(
                    "EVALSHA", self._update.sha, 1, key, repr(factor), arm, repr(reward), str(ttl), replaced
                )
            replies = await fail_closed(pipe.execute(raise_on_error=False))
            # Only the updates Redis refused for want of the script are sent again (on a Cluster one
            # node may know it and another not), so none is applied twice.
            missing = [
                u for u, reply in zip(updates, replies, strict=True) if isinstance(reply, NoScriptError)
            ]
            failed = [r for r in replies if isinstance(r, Exception) and not isinstance(r, NoScriptError)]
            if failed:
                await fail_closed(_raise(failed[0]))
            if not missing:
                return
            if attempt == 2:
                await fail_closed(_raise(NoScriptError("the policy script could not be loaded")))
            await fail_closed(self._redis.script_load(UPDATE))
            updates = missing

    async def user_posteriors(self, tenant: str, user: str) -> Posteriors:
        return parse(await fail_closed(self._redis.hgetall(keys.policy_user(tenant, user))))

    async def tenant_posteriors(self, tenant: str) -> Posteriors:
        return parse(await fail_closed(self._redis.hgetall(keys.policy_tenant(tenant))))


async def _raise(exc: Exception) -> None:
    raise exc
