"""The chat path decodes a persona once per version: it reads the version id at the head of the
stored blob, and decodes and renders the rest only for a version it has not seen."""

from __future__ import annotations

from unittest import mock

import pytest

from middleware.config import Settings
from middleware.metrics import Metrics
from middleware.models import Message, Persona, PreferencePair
from middleware.personalize.service import Personalizer, version_id_of
from middleware.store.connection import redis_client
from middleware.store.personas import PersonaStore

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
