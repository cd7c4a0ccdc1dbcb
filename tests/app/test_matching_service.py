"""Identification and registration through the service on hand-made fingerprints (no model involved)."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from api_testkit import unit_vectors
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from app.db.migrations import upgrade_to_head
from app.db.session import build_session_factory, unit_of_work
from app.db.tables import HNSW_INDEX_NAME, Event, EventKind, Fingerprint, MatchDecision, Pallet
from app.matching.repository import FingerprintRepository, nearest_query
from app.matching.schemas import MatchResult
from app.matching.service import EventDetails, MatchingConfig, MatchingService
from app.pallets.repository import PalletRepository
from models.runtime.voting import VotingThresholds

MODEL = "model-a"
CONFIG = MatchingConfig(
    thresholds=VotingThresholds(block_threshold=0.8, min_votes=2, score_threshold=0.3),
    top_k=10,
    shortlist_size=10,
    captures_per_pallet=3,
    ef_search=40,
    max_candidates=5,
)

Record = Callable[..., MatchResult]


@pytest.fixture
def record(session_factory: Callable[[], Session]) -> Record:
    """Record one receipt/dispatch in its own unit of work, as a request would."""

    def run(kind: EventKind, vectors: np.ndarray, model_id: str = MODEL, **details: object) -> MatchResult:
        with unit_of_work(session_factory) as session:
            return MatchingService(session, CONFIG).record(
                kind,
                vectors,
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
    pallet = unit_vectors(seed=1)
    registered = record(EventKind.RECEIPT, pallet)
    permuted = record(EventKind.DISPATCH, pallet[[3, 5, 0, 1, 4, 2]])
    assert registered.decision is MatchDecision.REGISTERED
    assert permuted.decision is MatchDecision.MATCHED
    assert permuted.pallet_id == registered.pallet_id
    assert permuted.votes == 6
    assert permuted.score == pytest.approx(1.0, abs=1e-3)


def test_missing_blocks_match_with_enough_votes(record: Record) -> None:
    pallet = unit_vectors(seed=2)
    registered = record(EventKind.RECEIPT, pallet)
    partial = record(EventKind.DISPATCH, pallet[[4, 1]])
    assert (partial.decision, partial.pallet_id, partial.blocks_compared) == (
        MatchDecision.MATCHED,
        registered.pallet_id,
        2,
    )
    single = record(EventKind.DISPATCH, pallet[[0]])
    assert single.decision is MatchDecision.REGISTERED, "one vote is below min_votes=2"


def test_noisy_captures_match_and_strangers_do_not(record: Record) -> None:
    pallet = unit_vectors(seed=3)
    registered = record(EventKind.RECEIPT, pallet)
    noisy = pallet + 0.02 * unit_vectors(seed=4)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    assert record(EventKind.DISPATCH, noisy).pallet_id == registered.pallet_id
    stranger = record(EventKind.DISPATCH, unit_vectors(seed=5))
    assert stranger.decision is MatchDecision.REGISTERED
    assert stranger.pallet_id != registered.pallet_id
    assert stranger.votes == 0


def test_exact_tie_resolves_deterministically(record: Record) -> None:
    twin = unit_vectors(seed=6)
    first = record(EventKind.RECEIPT, twin)
    # The first pallet is in stock, so an identical receipt cannot be it: a second pallet is registered.
    second = record(EventKind.RECEIPT, twin)
    assert second.decision is MatchDecision.REGISTERED
    assert second.pallet_id != first.pallet_id
    dispatch = record(EventKind.DISPATCH, twin)
    assert dispatch.candidates[0].votes == 6, "every block's nearest-pallet tie goes the same way"
    assert dispatch.pallet_id == min(first.pallet_id, second.pallet_id, key=str)


def test_dispatch_prefers_pallets_in_stock(record: Record, session: Session) -> None:
    a, b = unit_vectors(seed=7), unit_vectors(seed=8)
    pallet_a = record(EventKind.DISPATCH, a).pallet_id
    pallet_b = record(EventKind.RECEIPT, b).pallet_id
    mixed = np.concatenate([a[:4], b[4:]])
    result = record(EventKind.DISPATCH, mixed)
    assert {c.pallet_id: c.votes for c in result.candidates} == {pallet_a: 4, pallet_b: 2}
    assert result.pallet_id == pallet_b, "b is in stock, a already left: b wins despite fewer votes"
    assert status_of(session, pallet_b) == "dispatched"


def test_receipt_does_not_match_a_pallet_in_stock(record: Record, session: Session) -> None:
    pallet = unit_vectors(seed=9)
    in_stock = record(EventKind.RECEIPT, pallet)
    again = record(EventKind.RECEIPT, pallet)
    assert again.decision is MatchDecision.REGISTERED
    assert again.candidates == []
    assert status_of(session, in_stock.pallet_id) == "in_stock"


def test_fingerprints_of_one_model_never_match_queries_of_another(record: Record, session: Session) -> None:
    pallet = unit_vectors(seed=10)
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
        record(EventKind.RECEIPT, unit_vectors(seed=11))
    for table in (Pallet, Event, Fingerprint):
        assert session.scalar(select(func.count()).select_from(table)) == 0


def test_knn_query_uses_the_hnsw_index(record: Record, session: Session) -> None:
    for seed in range(20, 24):
        record(EventKind.RECEIPT, unit_vectors(seed=seed))
    session.execute(text("SET LOCAL enable_seqscan = off"))
    statement = nearest_query(unit_vectors(seed=20)[0], model_id=MODEL, limit=5)
    compiled = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    plan = "\n".join(session.execute(text(f"EXPLAIN {compiled}")).scalars())
    assert HNSW_INDEX_NAME in plan


def test_concurrent_dispatches_of_an_unknown_pallet_register_it_once(
    fresh_database: Callable[..., object],
) -> None:
    with fresh_database() as url:  # type: ignore[attr-defined]
        upgrade_to_head(url)
        engine = create_engine(url, pool_size=4)
        factory = build_session_factory(engine)
        pallet = unit_vectors(seed=30)
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
        record(EventKind.DISPATCH, pallet, model_id="model-b")
    noisy = pallet + 0.05 * unit_vectors(seed=41)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    mine = record(EventKind.RECEIPT, noisy, model_id=MODEL).pallet_id

    repository = FingerprintRepository(session)
    session.execute(text("SET LOCAL enable_seqscan = off"))
    repository.configure_search(ef_search=10)
    assert session.scalar(text("SELECT current_setting('hnsw.iterative_scan')")) == "relaxed_order"
    found = repository.nearest(pallet[0], model_id=MODEL, limit=3)
    assert [n.pallet_id for n in found] == [mine] * 3
    assert found[0].similarity > 0.99


def test_latest_captures_returns_the_newest_events_of_each_pallet(record: Record, session: Session) -> None:
    first, second, third = unit_vectors(seed=50), unit_vectors(seed=51), unit_vectors(seed=52)
    pallet = record(EventKind.RECEIPT, first).pallet_id
    record(EventKind.DISPATCH, second, pallet_id=pallet)
    record(EventKind.RECEIPT, third, pallet_id=pallet)
    record(EventKind.RECEIPT, unit_vectors(seed=53), model_id="model-b", pallet_id=pallet)
    other = record(EventKind.RECEIPT, unit_vectors(seed=54)).pallet_id

    captures = FingerprintRepository(session).latest_captures(
        [pallet, other, uuid.uuid4()], model_id=MODEL, per_pallet=2
    )

    assert set(captures) == {pallet, other}
    assert [capture.shape for capture in captures[pallet]] == [(6, 512), (6, 512)]
    # oldest first of the two newest, blocks in upload order; halfvec storage keeps ~3 decimals
    np.testing.assert_allclose(captures[pallet][0], second, atol=2e-3)
    np.testing.assert_allclose(captures[pallet][1], third, atol=2e-3)
    assert np.allclose(np.linalg.norm(captures[pallet][1], axis=1), 1.0)
    assert FingerprintRepository(session).latest_captures([], model_id=MODEL, per_pallet=2) == {}


def test_a_pallet_is_verified_against_its_recent_captures_only(
    record: Record, session_factory: Callable[[], Session]
) -> None:
    """Blocks repaired after receipt: the dispatch after the repair matches the newest capture."""
    before, after = unit_vectors(seed=60), unit_vectors(seed=61)
    pallet = record(EventKind.RECEIPT, before).pallet_id
    record(EventKind.DISPATCH, after, pallet_id=pallet)  # attached by id: the blocks were replaced
    record(EventKind.RECEIPT, after, pallet_id=pallet)
    again = record(EventKind.DISPATCH, after[::-1])
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
    stored = unit_vectors(seed=70)
    pallet = record(EventKind.RECEIPT, stored).pallet_id
    lookalike = stored[[0] * 6] + 0.3 * unit_vectors(seed=71)
    lookalike /= np.linalg.norm(lookalike, axis=1, keepdims=True)
    result = record(EventKind.DISPATCH, lookalike)
    assert result.decision is MatchDecision.REGISTERED and result.pallet_id != pallet
    assert result.candidates[0].pallet_id == pallet and result.candidates[0].votes == 6
    assert result.candidates[0].score < 0.3
