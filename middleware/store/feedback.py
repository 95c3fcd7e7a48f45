"""Feedback records: what an answer was (written once, off the hot path) and the signals it got.

One hash per answer under the user's hash tag (`keys.feedback`): `record` (the answer's JSON),
`s:<signal id>` (each signal as received), `c:<signal id>` (its pull on the reward), `reward`, and
`v:<slot>` (the signal id of the answer's latest verdict in a slot, e.g. thumbs up or down).
A signal is added by one script, so a retried signal counts once and the reward is always computed
from every signal that counts (two signals at once never lose one). A verdict replaces the earlier
verdict of its slot: the earlier one's pull is dropped (its `s:` stays, as received). A global owner
key (`keys.feedback_owner`) finds the record from the bare answer id; forget deletes both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from middleware.store import keys
from middleware.store.connection import one_slot_pipeline
from middleware.store.guard import fail_closed
from middleware.store.pipelines import Command
from middleware.store.write_behind import WriteBehind

# KEYS: the answer's hash, the user's sentiment hash.
# ARGV: signal id, signal JSON, pull (a number), sentiment score ('' unless a follow-up), alpha,
# verdict slot ('' for a signal that is no verdict), '1' when a stored verdict sent again takes the
# slot back (a verdict without idempotency key: the same content is the same id).
# A follow-up's pull is multiplied by the user's smoothed sentiment after this score is folded in.
# Returns {status, reward, previous reward, record, smoothed sentiment}: status -1 (no such answer),
# 0 (this signal was already stored and counts as it did), 1 (new, or a verdict that is the latest again).
_ADD_SIGNAL = """
local record = redis.call('HGET', KEYS[1], 'record')
if not record then return {-1, '', '', '', ''} end
local previous = redis.call('HGET', KEYS[1], 'reward') or ''
local slot = ARGV[6]
local current = false
if slot ~= '' then current = redis.call('HGET', KEYS[1], 'v:' .. slot) end
if redis.call('HSETNX', KEYS[1], 's:' .. ARGV[1], ARGV[2]) == 0 then
  if slot == '' or ARGV[7] ~= '1' or current == ARGV[1] then
    return {0, previous, previous, record, ''}
  end
  redis.call('HSET', KEYS[1], 's:' .. ARGV[1], ARGV[2])
end
if slot ~= '' then
  if current and current ~= ARGV[1] then redis.call('HDEL', KEYS[1], 'c:' .. current) end
  redis.call('HSET', KEYS[1], 'v:' .. slot, ARGV[1])
end
local pull = tonumber(ARGV[3])
local smoothed = ''
if ARGV[4] ~= '' then
  local alpha = tonumber(ARGV[5])
  local old = tonumber(redis.call('HGET', KEYS[2], 'ewma') or '0')
  local ewma = alpha * tonumber(ARGV[4]) + (1 - alpha) * old
  redis.call('HSET', KEYS[2], 'ewma', tostring(ewma))
  redis.call('HINCRBY', KEYS[2], 'n', 1)
  pull = pull * ewma
  smoothed = tostring(ewma)
end
redis.call('HSET', KEYS[1], 'c:' .. ARGV[1], tostring(pull))
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) == 'c:' then total = total + tonumber(fields[i + 1]) end
end
local reward = math.max(0, math.min(1, 0.5 + 0.5 * total))
redis.call('HSET', KEYS[1], 'reward', tostring(reward))
return {1, tostring(reward), previous, record, smoothed}
"""


@dataclass(frozen=True)
class SignalAdded:
    new: bool  # False: the same signal was stored before (a retry)
    reward: float | None
    previous_reward: float | None
    record: bytes
    sentiment: float | None  # the user's smoothed sentiment after a follow-up


@dataclass(frozen=True)
class PromptVerdicts:
    before: str | None  # this answer's verdict before this one (None: it had none)
    latest: dict[str, str]  # answer id -> its latest verdict, among the answers to one prompt


def _number(value: bytes | str | None) -> float | None:
    if value in (None, b"", ""):
        return None
    return float(value)


# KEYS: the answer's hash. ARGV: the record, the ttl in s. A record written behind its answer.
_PUT_RECORD = """
redis.call('HSET', KEYS[1], 'record', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 0
"""

# An answer's record as the recorder hands it over: tenant, user, answer id, the record's JSON.
Record = tuple[str, str, str, bytes]


class FeedbackStore:
    def __init__(self, redis: Redis, ttl_s: int, write_behind: WriteBehind | None = None) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._add_signal = redis.register_script(_ADD_SIGNAL)
        # the writes after an answer; shared with the other parts that have some (`Services`)
        self._write_behind = write_behind or WriteBehind(redis)
        self._put_record_sha = self._write_behind.script(_PUT_RECORD)
        self._takers: dict[Callable[[], list[Record]], None] = {}

    def write_later(self, take: Callable[[], list[Record]]) -> None:
        """Write the records `take` hands over at the next flush, behind their answers (two commands
        each: the record with its expiry, and its owner)."""
        self._takers[take] = None
        self._write_behind.soon(self._record_commands)

    def _record_commands(self) -> list[Command]:
        takers, self._takers = self._takers, {}
        commands: list[Command] = []
        ttl_s = self._ttl_s
        for take in takers:
            for tenant, user, response_id, record in take():
                key = keys.feedback(tenant, user, response_id)
                commands.append(("EVALSHA", self._put_record_sha, 1, key, record, ttl_s))
                commands.append(("SET", keys.feedback_owner(response_id), f"{tenant}\n{user}", "EX", ttl_s))
        return commands

    async def drain(self) -> None:
        """Wait until the records asked for are written."""
        await self._write_behind.drain()

    async def owner(self, response_id: str) -> tuple[str, str] | None:
        key = keys.feedback_owner(response_id)
        # the record of an answer of this process may still be on its way
        raw = await self._write_behind.read_through(lambda: fail_closed(self._redis.get(key)))
        if raw is None:
            return None
        tenant, _, user = (raw.decode() if isinstance(raw, bytes) else raw).partition("\n")
        return tenant, user

    async def add_signal(
        self,
        tenant: str,
        user: str,
        response_id: str,
        signal_id: str,
        signal: bytes,
        pull: float,
        sentiment: float | None = None,
        alpha: float = 0.3,
        verdict_slot: str | None = None,
        retake: bool = False,
    ) -> SignalAdded | None:
        """Store one signal once and recompute the answer's reward; None when the answer is unknown.
        With `verdict_slot` the signal replaces the answer's earlier verdict in that slot (only the
        latest counts); `retake`: a verdict already stored, sent again after another, is the latest
        again (else it is a retry and changes nothing)."""
        status, reward, previous, record, smoothed = await fail_closed(
            self._add_signal(
                keys=[keys.feedback(tenant, user, response_id), keys.sentiment(tenant, user)],
                args=[
                    signal_id,
                    signal,
                    repr(float(pull)),
                    "" if sentiment is None else repr(sentiment),
                    repr(alpha),
                    verdict_slot or "",
                    "1" if retake else "0",
                ],
            )
        )
        if int(status) < 0:
            return None
        return SignalAdded(int(status) == 1, _number(reward), _number(previous), record, _number(smoothed))

    async def mark_prompt(
        self, tenant: str, user: str, digest: str, response_id: str, verdict: str
    ) -> PromptVerdicts:
        """Note the answer's latest verdict among the answers to one prompt; returns its verdict
        before and the latest of them all."""
        key = keys.feedback_prompt(tenant, user, digest)
        pipe = one_slot_pipeline(self._redis)
        pipe.hget(key, response_id)
        pipe.hset(key, response_id, verdict)
        pipe.expire(key, self._ttl_s)
        pipe.hgetall(key)
        before, *_, found = await fail_closed(pipe.execute())
        return PromptVerdicts(
            None if before is None else _text(before), {_text(k): _text(v) for k, v in found.items()}
        )

    async def records(self, tenant: str, user: str, response_ids: list[str]) -> list[bytes | None]:
        if not response_ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for response_id in response_ids:
            pipe.hget(keys.feedback(tenant, user, response_id), "record")
        found: list[bytes | None] = await fail_closed(pipe.execute())
        return found

    async def sentiment(self, tenant: str, user: str) -> tuple[float, int]:
        """The user's smoothed sentiment (0 when none yet) and how many follow-ups shaped it."""
        raw = await fail_closed(self._redis.hmget(keys.sentiment(tenant, user), ["ewma", "n"]))
        return _number(raw[0]) or 0.0, int(raw[1] or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
