"""Identification and registration through the service on hand-made fingerprints and the real local features
of noise images (no network involved)."""

from __future__ import annotations

import dataclasses
import functools
import io
import threading
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from api_testkit import block_analysis, pick, unit_vectors
from pgvector import HalfVector
from PIL import Image
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.orm import Session

from app.db.migrations import upgrade_to_head
from app.db.session import build_session_factory, unit_of_work
from app.db.tables import Event, EventKind, Fingerprint, MatchDecision, Pallet
from app.matching.repository import (
    FingerprintRepository,
    fingerprint_from_binary,
    hnsw_index_ddl,
    hnsw_index_name,
    nearest_query,
)
from app.matching.schemas import MatchResult
from app.matching.service import EventDetails, MatchingConfig, MatchingService
from app.model_runner import BlockAnalysis, Later
from app.pallets.repository import PalletRepository
from models.runtime.detector import Detection, crop_blocks, encode_crop
from models.runtime.local_features import LocalFeatures, count_inliers, extract
from models.runtime.voting import VotingThresholds, side_scale_features
from models.synth import SynthConfig, render_pallet
from models.synth.sides import render_side

MODEL = "model-a"
CONFIG = MatchingConfig(
    thresholds=VotingThresholds(block_threshold=0.8, min_votes=2, score_threshold=0.3),
    top_k=10,
    shortlist_size=10,
    captures_per_pallet=3,
    ef_search=40,
    words_ef_search=40,
    max_candidates=5,
)

Record = Callable[..., MatchResult]


@pytest.fixture
def record(session_factory: Callable[[], Session]) -> Record:
    """Record one receipt/dispatch in its own unit of work, as a request would."""

    def run(kind: EventKind, blocks: BlockAnalysis, model_id: str = MODEL, **details: object) -> MatchResult:
        with unit_of_work(session_factory) as session:
            return MatchingService(session, CONFIG).record(
                kind,
                blocks,
                model_id=model_id,
                details=EventDetails(**details),  # type: ignore[arg-type]
            )

    return run


def status_of(session: Session, pallet_id: uuid.UUID) -> str:
    pallet = PalletRepository(session).get(pallet_id)
    assert pallet is not None
    session.refresh(pallet)
    return pallet.status


def test_permuted_positions_still_match(record: Record) -> None:
    pallet = block_analysis(seed=1)
    registered = record(EventKind.RECEIPT, pallet)
    permuted = record(EventKind.DISPATCH, pick(pallet, [3, 5, 0, 1, 4, 2]))
    assert registered.decision is MatchDecision.REGISTERED and not registered.review
    assert registered.verification is not None and registered.verification.band == "new"
    assert permuted.decision is MatchDecision.MATCHED and not permuted.review
    assert permuted.pallet_id == registered.pallet_id
    assert permuted.votes == 6
    assert permuted.score == pytest.approx(1.0, abs=1e-3)
    assert permuted.verification is not None and permuted.verification.confirmed_blocks == 6
    assert permuted.candidates[0].inliers is not None and permuted.candidates[0].inliers > 6 * 200


def test_missing_blocks_match_on_two_blocks_and_one_block_goes_to_review(record: Record) -> None:
    pallet = block_analysis(seed=2)
    registered = record(EventKind.RECEIPT, pallet)
    partial = record(EventKind.DISPATCH, pick(pallet, [4, 1]))
    assert (partial.decision, partial.pallet_id, partial.blocks_compared) == (
        MatchDecision.MATCHED,
        registered.pallet_id,
        2,
    )
    single = record(EventKind.DISPATCH, pick(pallet, [0]))
    assert single.decision is MatchDecision.REGISTERED, "evidence from one block is not enough to merge"
    assert single.review, "... but it is strong: a person should look"
    assert single.pallet_id != registered.pallet_id
    assert [c.pallet_id for c in single.candidates] == [registered.pallet_id]


def test_noisy_captures_match_and_strangers_do_not(record: Record) -> None:
    pallet = block_analysis(seed=3)
    registered = record(EventKind.RECEIPT, pallet)
    noisy = pallet.fingerprints + 0.02 * unit_vectors(seed=4)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    assert record(EventKind.DISPATCH, block_analysis(seed=3, fingerprints=noisy)).pallet_id == (
        registered.pallet_id
    )
    stranger = record(EventKind.DISPATCH, block_analysis(seed=5))
    assert stranger.decision is MatchDecision.REGISTERED and not stranger.review
    assert stranger.pallet_id != registered.pallet_id
    assert stranger.votes == 0


def test_network_lookalike_without_geometric_evidence_is_new(record: Record) -> None:
    """The network would merge these (identical fingerprints); the block images share no structure."""
    pallet = block_analysis(seed=12)
    registered = record(EventKind.RECEIPT, pallet)
    lookalike = record(EventKind.DISPATCH, block_analysis(seed=13, fingerprints=pallet.fingerprints))
    assert lookalike.decision is MatchDecision.REGISTERED and not lookalike.review
    assert lookalike.pallet_id != registered.pallet_id
    assert lookalike.votes == 6 and lookalike.score == pytest.approx(1.0, abs=1e-3)
    assert lookalike.verification is not None and lookalike.verification.band == "new"
    assert lookalike.candidates[0].inliers is not None and lookalike.candidates[0].inliers < 50


def test_indistinguishable_twins_go_to_review_never_to_one_of_them(record: Record) -> None:
    twin = block_analysis(seed=6)
    first = record(EventKind.RECEIPT, twin)
    # The first pallet is in stock, so an identical receipt cannot be it: a second pallet is registered.
    second = record(EventKind.RECEIPT, twin)
    assert second.decision is MatchDecision.REGISTERED
    assert second.pallet_id != first.pallet_id
    dispatch = record(EventKind.DISPATCH, twin)
    assert dispatch.decision is MatchDecision.REGISTERED and dispatch.review
    assert {c.pallet_id for c in dispatch.candidates} == {first.pallet_id, second.pallet_id}
    assert dispatch.verification is not None
    assert dispatch.verification.inliers == dispatch.verification.runner_up_inliers, "no margin at all"


def test_geometric_evidence_decides_a_mixed_capture(record: Record, session: Session) -> None:
    a, b = block_analysis(seed=7), block_analysis(seed=8)
    pallet_a = record(EventKind.DISPATCH, a).pallet_id
    pallet_b = record(EventKind.RECEIPT, b).pallet_id
    mixed = BlockAnalysis(
        fingerprints=np.concatenate([a.fingerprints[:4], b.fingerprints[4:]]),
        features=[*a.features[:4], *b.features[4:]],
    )
    result = record(EventKind.DISPATCH, mixed)
    assert {c.pallet_id: c.votes for c in result.candidates} == {pallet_a: 4, pallet_b: 2}
    assert {c.pallet_id: c.confirmed_blocks for c in result.candidates} == {pallet_a: 4, pallet_b: 2}
    assert result.pallet_id == pallet_a, "four confirmed blocks against two: a wins by a wide margin"
    assert status_of(session, pallet_a) == "dispatched"
    assert status_of(session, pallet_b) == "in_stock"


def test_the_evidence_is_stored_with_the_event(record: Record, session: Session) -> None:
    known = block_analysis(seed=14)
    record(EventKind.RECEIPT, known)
    record(EventKind.RECEIPT, block_analysis(seed=15))
    result = record(EventKind.DISPATCH, known)
    event = session.get(Event, result.event_id)
    assert event is not None and event.review is False
    assert result.verification is not None
    assert event.inliers == result.verification.inliers and event.inliers is not None and event.inliers > 1000
    assert event.runner_up_inliers == result.verification.runner_up_inliers
    assert event.runner_up_inliers is not None and event.runner_up_inliers < 50
    stored = FingerprintRepository(session).capture_features(result.event_id, model_id=MODEL, side_scale=True)
    assert [len(features) for features in stored.features if features is not None] == [
        len(f) for f in known.features
    ]


def test_a_network_match_on_blocks_without_stored_features_is_flagged_not_merged(
    record: Record, session: Session
) -> None:
    """Fingerprints recorded before local features were stored cannot be verified: review, never merge."""
    legacy = block_analysis(seed=16)
    pallet = record(EventKind.RECEIPT, legacy).pallet_id
    session.execute(update(Fingerprint).where(Fingerprint.pallet_id == pallet).values(local_features=None))
    session.commit()
    result = record(EventKind.DISPATCH, legacy)
    assert result.decision is MatchDecision.REGISTERED and result.review
    assert result.pallet_id != pallet and result.candidates[0].pallet_id == pallet


def test_receipt_does_not_match_a_pallet_in_stock(record: Record, session: Session) -> None:
    pallet = block_analysis(seed=9)
    in_stock = record(EventKind.RECEIPT, pallet)
    again = record(EventKind.RECEIPT, pallet)
    assert again.decision is MatchDecision.REGISTERED
    assert again.candidates == []
    assert status_of(session, in_stock.pallet_id) == "in_stock"


def test_fingerprints_of_one_model_never_match_queries_of_another(record: Record, session: Session) -> None:
    pallet = block_analysis(seed=10)
    under_a = record(EventKind.RECEIPT, pallet, model_id="model-a")
    under_b = record(EventKind.DISPATCH, pallet, model_id="model-b")
    assert under_b.decision is MatchDecision.REGISTERED
    assert under_b.candidates == []
    assert all(block.pallet_id is None for block in under_b.blocks)
    assert record(EventKind.DISPATCH, pallet, model_id="model-a").pallet_id == under_a.pallet_id
    models = session.execute(select(Fingerprint.model_id, func.count()).group_by(Fingerprint.model_id)).all()
    assert dict(models) == {"model-a": 12, "model-b": 6}


def test_failure_after_pallet_insert_rolls_everything_back(
    record: Record, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = PalletRepository.add

    def add_then_fail(self: PalletRepository, pallet: Pallet) -> Pallet:
        original(self, pallet)
        raise RuntimeError("injected failure after the pallet insert")

    monkeypatch.setattr(PalletRepository, "add", add_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        record(EventKind.RECEIPT, block_analysis(seed=11))
    for table in (Pallet, Event, Fingerprint):
        assert session.scalar(select(func.count()).select_from(table)) == 0


def test_knn_query_uses_the_hnsw_index(record: Record, session: Session) -> None:
    for seed in range(20, 24):
        record(EventKind.RECEIPT, block_analysis(seed=seed))
    session.execute(text(hnsw_index_ddl(MODEL, 512)))  # built at start for the model in service
    session.execute(text("SET LOCAL enable_seqscan = off"))
    statement = nearest_query(unit_vectors(seed=20)[0], model_id=MODEL, limit=5)
    compiled = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    plan = "\n".join(session.execute(text(f"EXPLAIN {compiled}")).scalars())
    assert hnsw_index_name(MODEL) in plan


def test_concurrent_dispatches_of_an_unknown_pallet_register_it_once(
    fresh_database: Callable[..., object],
) -> None:
    with fresh_database() as url:  # type: ignore[attr-defined]
        upgrade_to_head(url)
        engine = create_engine(url, pool_size=4)
        factory = build_session_factory(engine)
        pallet = block_analysis(seed=30)
        barrier = threading.Barrier(3)
        results: list[MatchResult] = []

        def dispatch() -> None:
            barrier.wait()
            with unit_of_work(factory) as session:
                results.append(
                    MatchingService(session, CONFIG).record(
                        EventKind.DISPATCH, pallet, model_id=MODEL, details=EventDetails()
                    )
                )

        threads = [threading.Thread(target=dispatch) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        with factory() as session:
            pallets = session.scalar(select(func.count()).select_from(Pallet))
        engine.dispose()
    assert len(results) == 3
    assert pallets == 1
    assert sorted(result.decision.value for result in results) == ["matched", "matched", "registered"]
    assert len({result.pallet_id for result in results}) == 1


def test_model_filter_keeps_recall_through_iterative_index_scans(record: Record, session: Session) -> None:
    """Another model's identical fingerprints crowd the HNSW candidate list; the filtered scan goes on."""
    pallet = unit_vectors(seed=40)
    for _ in range(20):
        record(EventKind.DISPATCH, block_analysis(seed=40), model_id="model-b")
    noisy = pallet + 0.05 * unit_vectors(seed=41)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    mine = record(EventKind.RECEIPT, block_analysis(seed=40, fingerprints=noisy), model_id=MODEL).pallet_id

    repository = FingerprintRepository(session)
    session.execute(text("SET LOCAL enable_seqscan = off"))
    repository.configure_search(ef_search=10)
    assert session.scalar(text("SELECT current_setting('hnsw.iterative_scan')")) == "relaxed_order"
    found = repository.nearest(pallet[0], model_id=MODEL, limit=3)
    assert [n.pallet_id for n in found] == [mine] * 3
    assert found[0].similarity > 0.99


def test_latest_captures_returns_the_newest_events_of_each_pallet(record: Record, session: Session) -> None:
    first, second, third = block_analysis(seed=50), block_analysis(seed=51), block_analysis(seed=52)
    pallet = record(EventKind.RECEIPT, first).pallet_id
    second_event = record(EventKind.DISPATCH, second, pallet_id=pallet).event_id
    third_event = record(EventKind.RECEIPT, third, pallet_id=pallet).event_id
    record(EventKind.RECEIPT, block_analysis(seed=53), model_id="model-b", pallet_id=pallet)
    other = record(EventKind.RECEIPT, block_analysis(seed=54)).pallet_id

    captures = FingerprintRepository(session).latest_captures(
        [pallet, other, uuid.uuid4()], model_id=MODEL, per_pallet=2
    )

    assert set(captures) == {pallet, other}
    assert [capture.event_id for capture in captures[pallet]] == [third_event, second_event], "newest first"
    # blocks in upload order; halfvec storage keeps ~3 decimals
    np.testing.assert_allclose(captures[pallet][0].fingerprints, third.fingerprints, atol=2e-3)
    np.testing.assert_allclose(captures[pallet][1].fingerprints, second.fingerprints, atol=2e-3)
    assert np.allclose(np.linalg.norm(captures[pallet][1].fingerprints, axis=1), 1.0)
    assert FingerprintRepository(session).latest_captures([], model_id=MODEL, per_pallet=2) == {}
    by_event = FingerprintRepository(session).captures_fingerprints([third_event, 10**9], model_id=MODEL)
    assert list(by_event) == [third_event]
    np.testing.assert_array_equal(by_event[third_event], captures[pallet][0].fingerprints)


def test_fingerprints_are_read_in_pgvectors_binary_form() -> None:
    values = np.random.default_rng(3).normal(size=(7,)).astype(np.float32)
    read = fingerprint_from_binary(HalfVector(values).to_binary())
    assert read.dtype == np.float64 and read.shape == (7,)
    np.testing.assert_array_equal(read, values.astype(np.float16).astype(np.float64))


def test_a_pallet_is_verified_against_its_recent_captures_only(
    record: Record, session_factory: Callable[[], Session]
) -> None:
    """Blocks repaired after receipt: the dispatch after the repair matches the newest capture."""
    before, after = block_analysis(seed=60), block_analysis(seed=61)
    pallet = record(EventKind.RECEIPT, before).pallet_id
    record(EventKind.DISPATCH, after, pallet_id=pallet)  # attached by id: the blocks were replaced
    record(EventKind.RECEIPT, after, pallet_id=pallet)
    again = record(EventKind.DISPATCH, pick(after, [5, 4, 3, 2, 1, 0]))
    assert (again.decision, again.pallet_id) == (MatchDecision.MATCHED, pallet)
    assert again.score == pytest.approx(1.0, abs=1e-3)

    # the receipt-time blocks still find the pallet in the index, but its newest captures no longer look
    # like them: with one capture verified, the old look is a stranger
    one_capture = dataclasses.replace(CONFIG, captures_per_pallet=1)
    record(EventKind.RECEIPT, after, pallet_id=pallet)
    with unit_of_work(session_factory) as session:
        old_look = MatchingService(session, one_capture).record(
            EventKind.DISPATCH, before, model_id=MODEL, details=EventDetails()
        )
    assert old_look.decision is MatchDecision.REGISTERED
    assert old_look.candidates[0].pallet_id == pallet and old_look.candidates[0].votes == 6
    assert old_look.candidates[0].score < 0.1


def test_a_stranger_resembling_one_stored_block_is_not_matched(record: Record) -> None:
    """Best-block scoring would give this stranger ~0.9 against the only stored pallet; pairing does not."""
    stored = block_analysis(seed=70)
    pallet = record(EventKind.RECEIPT, stored).pallet_id
    lookalike = stored.fingerprints[[0] * 6] + 0.3 * unit_vectors(seed=71)
    lookalike /= np.linalg.norm(lookalike, axis=1, keepdims=True)
    result = record(EventKind.DISPATCH, block_analysis(seed=71, fingerprints=lookalike))
    assert result.decision is MatchDecision.REGISTERED and result.pallet_id != pallet
    assert result.candidates[0].pallet_id == pallet and result.candidates[0].votes == 6
    assert result.candidates[0].score < 0.3


@functools.cache
def rendered_pallet(pallet: int) -> tuple[list[Image.Image], list[Image.Image]]:
    """A rendered pallet's six block images (one camera) and its six blocks cut out of its two side views
    (truth quads) and JPEG-encoded, as the service cuts them."""
    config = SynthConfig(pallets=1, first_pallet=pallet, cameras=1, frames=1)
    captures = sorted(render_pallet(config, pallet, "chipsplat"), key=lambda capture: capture.block)
    crops = [Image.open(io.BytesIO(capture.jpeg)).convert("RGB") for capture in captures]
    side_blocks: list[Image.Image] = []
    for side in (0, 1):
        view = render_side(0, pallet, side, "chipsplat", "yard", (1280, 720))
        truth = [Detection(block.box, 1.0, block.quad) for block in view.blocks]
        cut = crop_blocks(view.image(), truth)
        side_blocks += [Image.open(io.BytesIO(encode_crop(crop))).convert("RGB") for crop in cut]
    return crops, side_blocks


def test_side_views_and_block_images_meet_at_the_side_view_scale(record: Record, session: Session) -> None:
    """A pallet received from block images and dispatched from side views (and the other way round) is
    verified with the block images' side-scale features against the side view's blocks, block for block; a
    block-image capture stored without them is verified with its own features."""
    geometry = CONFIG.geometry
    crops, side_blocks = rendered_pallet(990_210)
    own = [extract(image, geometry.extractor) for image in crops]
    scaled = [side_scale_features(image, geometry) for image in crops]
    sides = [extract(image, geometry.side_view_extractor) for image in side_blocks]

    def inliers(query: list[LocalFeatures], stored: list[LocalFeatures]) -> int:
        return sum(count_inliers(q, s, geometry.matcher) for q, s in zip(query, stored, strict=True))

    for seed, receipt_side_scale in ((30, scaled), (31, None)):
        vectors = unit_vectors(seed)
        receipt = record(
            EventKind.RECEIPT, BlockAnalysis(vectors, own, at_side_scale=_ready(receipt_side_scale))
        )
        dispatch = record(EventKind.DISPATCH, BlockAnalysis(vectors, sides, from_side_views=True))
        assert dispatch.verification is not None
        expected = inliers(sides, receipt_side_scale or own)
        assert (dispatch.pallet_id, dispatch.verification.inliers) == (receipt.pallet_id, expected)
        from_side_views = {
            event.id: event.from_side_views
            for event in session.scalars(select(Event).where(Event.pallet_id == receipt.pallet_id))
        }
        assert from_side_views == {receipt.event_id: False, dispatch.event_id: True}
    assert inliers(sides, scaled) > inliers(sides, own), "the side-view scale is the better match"

    vectors = unit_vectors(32)
    received = record(EventKind.RECEIPT, BlockAnalysis(vectors, sides, from_side_views=True))
    dispatched = record(EventKind.DISPATCH, BlockAnalysis(vectors, own, at_side_scale=Later.ready(scaled)))
    assert dispatched.pallet_id == received.pallet_id and dispatched.verification is not None
    assert dispatched.verification.inliers == inliers(scaled, sides)
    stored = FingerprintRepository(session).capture_features(
        dispatched.event_id, model_id=MODEL, side_scale=True
    )
    assert [None if f is None else f.to_bytes() for f in stored.at_side_scale or []] == [
        f.to_bytes() for f in scaled
    ]


def _ready(features: list[LocalFeatures] | None) -> Later[list[LocalFeatures]] | None:
    return Later.ready(features) if features is not None else None
