"""The six per-block k-NN searches of a dispatch in one statement, and the verification read in one more."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from api_testkit import block_analysis, unit_vectors
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from app.db.session import unit_of_work
from app.db.tables import EventKind, PalletStatus
from app.matching.repository import (
    FingerprintRepository,
    hnsw_index_ddl,
    hnsw_index_name,
    nearest_per_block_query,
)
from app.matching.service import EventDetails, MatchingConfig, MatchingService
from models.runtime.voting import GeometryParameters, VotingThresholds

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


def _record(session_factory: Callable[[], Session], kind: EventKind, seed: int, **details: object) -> None:
    with unit_of_work(session_factory) as session:
        MatchingService(session, CONFIG).record(
            kind,
            block_analysis(seed=seed),
            model_id=str(details.pop("model_id", MODEL)),
            details=EventDetails(**details),  # type: ignore[arg-type]
        )


@pytest.fixture
def gallery(session_factory: Callable[[], Session]) -> None:
    """Eight pallets of ``MODEL`` (half dispatched) and two of another model."""
    for seed in range(100, 108):
        _record(session_factory, EventKind.RECEIPT if seed % 2 else EventKind.DISPATCH, seed)
    for seed in (108, 109):
        _record(session_factory, EventKind.RECEIPT, seed, model_id="model-b")


def _queries() -> np.ndarray:
    """Six query blocks: noisy copies of stored blocks of different pallets."""
    stored = np.stack([unit_vectors(seed=100 + index)[index] for index in range(6)])
    noisy = stored + 0.3 * unit_vectors(seed=999)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


@pytest.mark.usefixtures("gallery")
def test_one_statement_finds_what_the_per_block_queries_find(session: Session) -> None:
    repository = FingerprintRepository(session)
    repository.configure_search(ef_search=40)
    queries = _queries()

    batched = repository.nearest_per_block(queries, model_id=MODEL, limit=7)
    separate = [repository.nearest(query, model_id=MODEL, limit=7) for query in queries]

    assert len(batched) == len(separate) == 6
    for index, (together, alone) in enumerate(zip(batched, separate, strict=True)):
        assert len(together) == 7
        # relaxed_order scans may return a block's neighbours slightly out of order; the batched statement
        # sorts them, so compare them as sets of (pallet, status, similarity)
        assert sorted(
            (str(n.pallet_id), n.pallet_status, round(n.similarity, 5)) for n in together
        ) == sorted((str(n.pallet_id), n.pallet_status, round(n.similarity, 5)) for n in alone)
        assert [n.similarity for n in together] == sorted((n.similarity for n in together), reverse=True)
        assert together[0].similarity > 0.9, f"block {index} finds the pallet it was copied from first"
    statuses = {n.pallet_status for block in batched for n in block}
    assert statuses == {PalletStatus.IN_STOCK.value, PalletStatus.DISPATCHED.value}
    assert repository.nearest_per_block(queries[:0], model_id=MODEL, limit=7) == []


@pytest.mark.usefixtures("gallery")
def test_the_batched_search_reads_through_the_hnsw_index(session: Session) -> None:
    session.execute(text(hnsw_index_ddl(MODEL, 512)))  # built at start for the model in service
    session.execute(text("SET LOCAL enable_seqscan = off"))
    statement = nearest_per_block_query(_queries(), model_id=MODEL, limit=5)
    compiled = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    plan = "\n".join(session.execute(text(f"EXPLAIN {compiled}")).scalars())
    assert hnsw_index_name(MODEL) in plan
    assert "Lateral" in plan or "Nested Loop" in plan


@pytest.mark.usefixtures("gallery")
def test_identification_takes_one_round_trip_for_the_search_and_one_for_the_features(
    session: Session,
) -> None:
    """Search settings, k-NN, recent captures, stored features of the checked captures: four statements."""
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    config = MatchingConfig(
        thresholds=CONFIG.thresholds,
        top_k=10,
        shortlist_size=10,
        captures_per_pallet=3,
        ef_search=40,
        words_ef_search=40,
        max_candidates=5,
        geometry=GeometryParameters(candidates_checked=3),
    )
    service = MatchingService(session, config)
    connection = session.connection()
    event.listen(connection, "before_cursor_execute", count)
    try:
        decision = service.identify(EventKind.DISPATCH, block_analysis(seed=103), model_id=MODEL)
    finally:
        event.remove(connection, "before_cursor_execute", count)
    assert decision.pallet is not None
    assert len(decision.checked) >= 2, "the rule checked several candidates"
    assert len(statements) == 4, statements
    assert sum("local_features" in sql for sql in statements) == 1
    assert sum("unnest" in sql for sql in statements) == 1
