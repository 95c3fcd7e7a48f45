"""The chat path decodes a persona once per version: its round trip reads the head of each stored
blob (the version id), and the rest is read, decoded and rendered only for a version it has not seen."""

from __future__ import annotations

import asyncio
import time
from typing import Literal
from unittest import mock

import pytest

from middleware.config import Settings
from middleware.metrics import Metrics
from middleware.models import Message, Persona, PreferencePair
from middleware.personalize.contexts import build_router
from middleware.personalize.resolve import Resolver
from middleware.personalize.service import Personalizer, version_id_of
from middleware.store import keys
from middleware.store.connection import redis_client
from middleware.store.contexts import HEAD_BYTES, ContextStore
from middleware.store.guard import PersonaReadFailed, resolved
from middleware.store.personas import PersonaStore
from middleware.store.segments import PersonaReader
from tests.contexts_data import CODE, COOKING, COOKING_CALL, UNRELATED_CALL
from tests.support.redis_server import RedisServer

T, U = "tenant-a", "alice"
# Text that spells the head's own field names, quotes and backslashes included.
TRICKY = 'He wrote {"text":"x","version":9,"version_id":"' + "f" * 32 + '"} \\" and "version_id":"abc"'


def exemplar() -> PreferencePair:
    return PreferencePair(
        user_id=U,
        context=[Message(role="user", content="Best budget laptop?")],
        chosen=Message(role="assistant", content="ThinkPad E14."),
        rejected=Message(role="assistant", content="Many laptops exist."),
    )


@pytest.mark.parametrize("text", ["Likes short answers.", TRICKY, ""])
async def test_the_version_id_is_read_from_the_head_of_the_stored_blob(redis_url: str, text: str) -> None:
    async with redis_client(Settings(redis_url=redis_url)) as redis:
        store = PersonaStore(redis)
        saved = await store.save(T, U, text, [exemplar()], {"train_ids": ["p1", "p2"]})
        blob = await store.read_current_blob(T, U)
    assert blob is not None and version_id_of(blob) == saved.version_id


def test_a_blob_in_an_older_field_order_is_parsed_for_its_version_id() -> None:
    assert version_id_of(b'{"text":"\\"version_id\\":\\"f\\"","version":1,"version_id":"abc"}') == "abc"
    assert version_id_of(b"not json") is None
    assert version_id_of(b"[1, 2]") is None


async def test_each_version_is_decoded_once_and_a_new_version_is_served_at_once(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url)
    async with redis_client(settings) as redis:
        store = PersonaStore(redis)
        personalizer = Personalizer(store, settings, Metrics())
        first = await store.save(T, U, "Likes short answers.", [exemplar()], {"train_ids": ["p1"]})
        with mock.patch.object(Persona, "model_validate_json", wraps=Persona.model_validate_json) as decode:
            one = [await personalizer.current(T, U) for _ in range(5)]
            assert decode.call_count == 1
            second = await store.save(T, U, "Likes long answers.", [], {})
            two = await personalizer.current(T, U)
            assert decode.call_count == 2
            await store.rollback(T, U, first.version)
            decoded = decode.call_count  # the rollback's own reply decodes too
            back = await personalizer.current(T, U)
            assert decode.call_count == decoded  # version 1 is still cached
    assert {a.version_id for a in one if a} == {first.version_id}
    assert one[0] is not None and "Likes short answers." in one[0].block and "ThinkPad E14." in one[0].block
    assert one[0].persona.text == "Likes short answers." and one[0].persona.provenance == {}
    assert two is not None and two.version_id == second.version_id and "Likes long answers." in two.block
    assert back is not None and back.version == first.version and "Likes short answers." in back.block


async def test_the_chat_read_brings_heads_and_reads_each_new_version_whole_once(redis_url: str) -> None:
    """The round trip brings back the first bytes of each blob (a router of tens of KB included);
    a version the process has not decoded is read whole once, then served from the cache."""
    settings = Settings(redis_url=redis_url)
    # a third context (without a persona) of many rare terms makes the router's IDF table large
    groups: dict[str, tuple[Literal["tag", "cluster"], list[str]]] = {
        "cooking": ("tag", COOKING),
        "code": ("tag", CODE),
        "misc": ("cluster", [f"term{i} word{i} thing{i}" for i in range(400)]),
    }
    async with redis_client(settings) as redis:
        personas, contexts = PersonaStore(redis), ContextStore(redis)
        reader = PersonaReader(redis)
        resolver = Resolver(Personalizer(personas, settings, Metrics()), reader)
        await personas.save(T, U, "General taste.", [exemplar()], {})
        cooking = await contexts.save(T, U, "cooking", "Cooking taste.", [exemplar()])
        await contexts.save(T, U, "code", "Code taste.", [])
        router_blob = build_router(groups).model_dump_json().encode()
        await contexts.set_router(T, U, router_blob)

        reads, _ = await reader.read(T, U, None)
        assert len(router_blob) > 10_000
        assert reads.contexts[b"router"] == router_blob[:HEAD_BYTES]
        assert reads.own is not None and len(reads.own) == HEAD_BYTES
        assert {len(head) for head in reads.contexts.values()} == {HEAD_BYTES}

        with mock.patch.object(reader, "whole", wraps=reader.whole) as whole:
            first = await resolver.of(reads, text=COOKING_CALL)
            assert [call.args[1] for call in whole.call_args_list] == [b"router", b"c:cooking"], first
            again = await resolver.of((await reader.read(T, U, None))[0], text=COOKING_CALL)
            assert whole.call_count == 2  # router and persona decoded already
            general = await resolver.of(reads, text=UNRELATED_CALL)
            assert whole.call_args_list[-1].args[1] == "own" and whole.call_count == 3

            newer = await contexts.save(T, U, "cooking", "Cooking taste, newer.", [])
            fresh = await resolver.of((await reader.read(T, U, None))[0], text=COOKING_CALL)
            assert whole.call_count == 4
    assert (first.source, first.persona and first.persona.version_id) == ("user-context", cooking.version_id)
    assert again.persona is first.persona
    assert general.source == "user" and general.persona and "General taste." in general.persona.block
    assert fresh.persona and fresh.persona.version_id == newer.version_id
    assert "Cooking taste, newer." in fresh.persona.block


async def test_a_blob_without_its_id_up_front_and_a_part_gone_since_the_read(redis_url: str) -> None:
    """A blob in an older field order has no id in its head: it is read whole (each call). A part
    gone between the round trip and its whole read falls back to the next persona in line."""
    settings = Settings(redis_url=redis_url)
    older = b'{"text":"Older field order.","version":3,"version_id":"' + b"e" * 32 + b'","created_at":""}'
    async with redis_client(settings) as redis:
        reader = PersonaReader(redis)
        resolver = Resolver(Personalizer(PersonaStore(redis), settings, Metrics()), reader)
        await redis.set(keys.persona_current(T, U), older)
        with mock.patch.object(reader, "whole", wraps=reader.whole) as whole:
            found = [await resolver.of((await reader.read(T, U, None))[0]) for _ in range(2)]
            assert whole.call_count == 2
            reads = (await reader.read(T, U, None))[0]._replace(
                contexts={b"c:gone": b'{"version":1,"version_id":"' + b"d" * 32 + b'"'}
            )
            fallen = await resolver.of(reads, tag="gone")
    assert [(f.source, f.version) for f in found] == [("user", 3), ("user", 3)]
    assert found[0].persona and "Older field order." in found[0].persona.block
    assert fallen.source == "user" and fallen.version == 3


async def test_contexts_stored_before_their_heads_get_their_heads_on_the_first_call(redis_url: str) -> None:
    """A contexts hash whose heads hash does not match it (stored before heads were written): that
    call writes the heads from it and routes as before, and the next calls find them. A switched-off
    context leaves both hashes alike."""
    settings = Settings(redis_url=redis_url)
    async with redis_client(settings) as redis:
        contexts = ContextStore(redis)
        reader = PersonaReader(redis)
        resolver = Resolver(Personalizer(PersonaStore(redis), settings, Metrics()), reader)
        cooking = await contexts.save(T, U, "cooking", "Cooking taste.", [])
        await contexts.save(T, U, "code", "Code taste.", [])
        await contexts.set_router(
            T,
            U,
            build_router({"cooking": ("tag", COOKING), "code": ("tag", CODE)}).model_dump_json().encode(),
        )
        assert (await reader.read(T, U, None))[0].contexts_complete
        await contexts.clear(T, U, "code")
        cleared = (await reader.read(T, U, None))[0]
        assert cleared.contexts_complete and set(cleared.contexts) == {b"c:cooking", b"router"}

        await redis.delete(keys.context_heads(T, U))
        older = (await reader.read(T, U, None))[0]
        with mock.patch.object(reader, "complete", wraps=reader.complete) as complete:
            found = await resolver.of(older, text=COOKING_CALL)
            assert complete.call_count == 1
            later = (await reader.read(T, U, None))[0]
            assert later.contexts_complete and (await resolver.of(later, text=COOKING_CALL)) == found
            assert complete.call_count == 1
        stored = await resolved(redis.hgetall(keys.contexts(T, U)))
    assert not older.contexts_complete and older.contexts == {}
    assert later.contexts == {field: blob[:HEAD_BYTES] for field, blob in stored.items()}
    assert found.source == "user-context" and found.persona and found.persona.version_id == cooking.version_id


async def test_a_stalled_store_costs_one_bounded_read_then_reads_are_skipped_until_the_breaker_closes(
    fresh_redis: RedisServer,
) -> None:
    async with redis_client(Settings(redis_url=fresh_redis.url)) as redis:
        store = PersonaStore(redis, read_timeout_s=0.05, breaker_s=0.3)
        await store.save(T, U, "Likes short answers.", [exemplar()], {})
        with fresh_redis.while_paused():
            started = time.monotonic()
            with pytest.raises(PersonaReadFailed) as first:
                await store.read_current_blob(T, U)
            assert not first.value.skipped and time.monotonic() - started < 1.0  # bounded, not hung
            with pytest.raises(PersonaReadFailed) as second:
                await store.read_current(T, U)
            assert second.value.skipped  # not even tried: an outage costs the next calls nothing
        deadline = time.monotonic() + 10
        while True:  # the breaker closes after its 0.3 s, and the store answers again
            try:
                blob = await store.read_current_blob(T, U)
                break
            except PersonaReadFailed as exc:
                assert exc.skipped and time.monotonic() < deadline
                await asyncio.sleep(0.02)
    assert blob is not None and b"Likes short answers." in blob
