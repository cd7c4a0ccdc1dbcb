"""Visual words in the service: written for each recorded block by the word indexer after the commit,
searched through their own HNSW index as a second source of candidates, filled by the reindex for rows
stored without them. Real PostgreSQL, real local features of noise images, a real (tiny) vocabulary learned
from other noise images."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from api_testkit import (
    FreshDatabase,
    block_analysis,
    block_files,
    insert_receipts,
    noise_block_features,
    noise_blocks,
    unit_vectors,
    wait_until,
)
from fastapi.testclient import TestClient
from sqlalchemy import Connection, create_engine, event, func, inspect, select, text, update
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.orm import Session

from app.cli import main
from app.db.migrations import alembic_config, upgrade_to_head
from app.db.session import unit_of_work
from app.db.tables import EventKind, Fingerprint, FingerprintWords, MatchDecision
from app.images.reindex import ReindexRepository, fill_visual_words, write_missing_words
from app.main import create_app
from app.matching.repository import (
    WORDS_HNSW_EF_CONSTRUCTION,
    WORDS_HNSW_M,
    WORDS_INDEX_PREFIX,
    FingerprintRepository,
    nearest_words_per_block_query,
    words_from_binary,
    words_index_ddl,
    words_index_name,
    words_index_valid,
)
from app.matching.schemas import MatchResult
from app.matching.service import EventDetails, MatchingConfig, MatchingService
from app.model_runner import BlockAnalysis, BlockWords, Later
from app.settings import Settings
from models.runtime.checkpoint import read_metadata
from models.runtime.visual_words import SparseWords, VisualVocabulary
from models.runtime.voting import GeometryParameters, Outcome, VotingThresholds
from models.training.vocabulary import VocabularyConfig, learn_vocabulary

MODEL = "model-words"
NETWORK_REACH_ONE = MatchingConfig(
    thresholds=VotingThresholds(block_threshold=0.8, min_votes=2, score_threshold=0.3),
    top_k=6,
    shortlist_size=1,
    captures_per_pallet=3,
    ef_search=40,
    words_ef_search=40,
    max_candidates=5,
    geometry=GeometryParameters(candidates_checked=1),
)
"""The network's shortlist holds one pallet and the rule checks only it: a lookalike fools it for real."""

SettingsFactory = Callable[..., Settings]
Record = Callable[..., MatchResult]


@pytest.fixture(scope="module")
def vocabulary() -> VisualVocabulary:
    """128 words learned from the local features of noise images that no test records."""
    training = [features.descriptors for seed in range(100, 104) for features in noise_block_features(seed)]
    return learn_vocabulary(training, VocabularyConfig(branches=8, leaves=16, iterations=5))


def with_words(analysis: BlockAnalysis, vocabulary: VisualVocabulary) -> BlockAnalysis:
    """``analysis`` as the model runner makes it with a vocabulary: the words of its local features."""
    return replace(analysis, words=Later.ready(BlockWords.encode(vocabulary, analysis.features)))


@pytest.fixture
def record(session_factory: Callable[[], Session], vocabulary: VisualVocabulary) -> Record:
    """Record, then (blocks with words: a model with a vocabulary) write the words as the indexer does."""

    def run(
        kind: EventKind, blocks: BlockAnalysis, config: MatchingConfig = NETWORK_REACH_ONE
    ) -> MatchResult:
        with unit_of_work(session_factory) as session:
            result = MatchingService(session, config).record(
                kind, blocks, model_id=MODEL, details=EventDetails()
            )
        if blocks.words is not None:
            write_missing_words(session_factory, model_id=MODEL, vocabulary=vocabulary)
        return result

    return run


def post(client: TestClient, path: str, blobs: list[bytes]) -> dict[str, Any]:
    response = client.post(path, files=block_files(blobs))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def stored_words(session: Session, pallet_id: uuid.UUID) -> list[tuple[str | None, SparseWords | None]]:
    rows = session.execute(
        select(FingerprintWords.vocabulary_id, func.sparsevec_send(FingerprintWords.words))
        .select_from(Fingerprint)
        .outerjoin(FingerprintWords, FingerprintWords.fingerprint_id == Fingerprint.id)
        .where(Fingerprint.pallet_id == pallet_id)
        .order_by(Fingerprint.event_id, Fingerprint.position)
    ).all()
    return [
        (vocabulary_id, None if data is None else words_from_binary(data)) for vocabulary_id, data in rows
    ]


def test_migration_0010_moves_the_words_into_their_own_table_and_back(fresh_database: FreshDatabase) -> None:
    words = "{1:0.6,5:0.8}/128"
    with fresh_database() as url:
        config = alembic_config(url)
        command.upgrade(config, "0009")
        engine = create_engine(url)
        with engine.begin() as connection:
            pallet, (event_id,) = insert_receipts(connection)
            with_words, without = (
                connection.execute(
                    text(
                        "INSERT INTO fingerprints (pallet_id, event_id, model_id, position, embedding, "
                        "visual_words, vocabulary_id) VALUES (:pallet, :event, 'model-a', :position, "
                        "'[1,0,0]', CAST(:words AS sparsevec), :vocabulary) RETURNING id"
                    ),
                    {
                        "pallet": pallet,
                        "event": event_id,
                        "position": position,
                        "words": value,
                        "vocabulary": vocab,
                    },
                ).scalar_one()
                for position, value, vocab in ((0, words, "words-a"), (1, None, None))
            )

        command.upgrade(config, "0010")

        with engine.begin() as connection:
            moved = connection.execute(
                text("SELECT fingerprint_id, model_id, vocabulary_id, words::text FROM block_words")
            ).all()
            assert [tuple(row) for row in moved] == [(with_words, "model-a", "words-a", words)]
            columns = {column["name"] for column in inspect(connection).get_columns("fingerprints")}
            assert not columns & {"visual_words", "vocabulary_id"}
        command.downgrade(config, "0009")
        with engine.begin() as connection:
            back = connection.execute(
                text("SELECT id, vocabulary_id, visual_words::text FROM fingerprints ORDER BY id")
            ).all()
            assert [tuple(row) for row in back] == [(with_words, "words-a", words), (without, None, None)]
            assert "block_words" not in inspect(connection).get_table_names()
        engine.dispose()


def test_the_words_of_a_receipts_blocks_are_written_after_it_with_their_vocabulary(
    session_factory: Callable[[], Session], session: Session, vocabulary: VisualVocabulary
) -> None:
    blocks = with_words(block_analysis(seed=1), vocabulary)
    with unit_of_work(session_factory) as recording:
        receipt = MatchingService(recording, NETWORK_REACH_ONE).record(
            EventKind.RECEIPT, blocks, model_id=MODEL, details=EventDetails()
        )
    assert stored_words(session, receipt.pallet_id) == [(None, None)] * 6, "not in the recording"
    assert write_missing_words(session_factory, model_id=MODEL, vocabulary=vocabulary, batch_size=4)[0] == 6
    stored = stored_words(session, receipt.pallet_id)
    assert [vocabulary_id for vocabulary_id, _ in stored] == [vocabulary.vocabulary_id] * 6
    assert blocks.words is not None
    for (_, words), expected in zip(stored, blocks.words.get().per_block, strict=True):
        assert words is not None and words.dimensions == vocabulary.size
        np.testing.assert_array_equal(words.indices, expected.indices)
        np.testing.assert_allclose(words.values, expected.values, rtol=1e-6)
    assert write_missing_words(session_factory, model_id=MODEL, vocabulary=vocabulary) == (0, 0)
    assert write_missing_words(session_factory, model_id="another-model", vocabulary=vocabulary)[0] == 0


def test_word_search_finds_the_pallet_of_the_same_blocks_first_through_its_index(
    record: Record, session: Session, vocabulary: VisualVocabulary
) -> None:
    receipts = {
        seed: record(EventKind.RECEIPT, with_words(block_analysis(seed=seed), vocabulary))
        for seed in (3, 4, 5, 6)
    }
    pending = with_words(block_analysis(seed=5), vocabulary).words
    assert pending is not None
    dispatch = pending.get()
    session.execute(text(words_index_ddl(MODEL, vocabulary.vocabulary_id, vocabulary.size)))  # built at start
    repository = FingerprintRepository(session)
    repository.configure_search(ef_search=40)

    per_block = repository.nearest_words_per_block(
        dispatch.per_block, model_id=MODEL, vocabulary_id=vocabulary.vocabulary_id, limit=5
    )

    assert [block[0].pallet_id for block in per_block] == [receipts[5].pallet_id] * 6
    assert all(block[0].similarity == pytest.approx(1.0, abs=1e-5) for block in per_block)
    assert all(len(block) == 5 and block[0].similarity >= block[-1].similarity for block in per_block)
    other = repository.nearest_words_per_block(
        dispatch.per_block, model_id="another-model", vocabulary_id=vocabulary.vocabulary_id, limit=5
    )
    assert other == [[]] * 6, "only the model's own rows"

    statement = nearest_words_per_block_query(
        dispatch.per_block, model_id=MODEL, vocabulary_id=vocabulary.vocabulary_id, limit=5
    )
    compiled = statement.compile(dialect=psycopg_dialect(), compile_kwargs={"render_postcompile": True})
    parameters = {
        name: [vector.to_text() for vector in value] if isinstance(value, list) else value
        for name, value in compiled.params.items()
    }
    session.execute(text("SET LOCAL enable_seqscan = off"))
    plan = "\n".join(session.connection().exec_driver_sql(f"EXPLAIN {compiled}", parameters).scalars())
    assert words_index_name(MODEL, vocabulary.vocabulary_id) in plan


def test_a_pallet_the_network_misses_is_matched_through_its_words(
    record: Record, session: Session, vocabulary: VisualVocabulary
) -> None:
    """The network's one shortlisted, one checked pallet is a lookalike (the dispatch's fingerprints are
    its own); the true pallet shares the dispatch's blocks, which only the word search sees."""
    lookalike = record(EventKind.RECEIPT, with_words(block_analysis(seed=7), vocabulary))
    true_pallet = record(EventKind.RECEIPT, with_words(block_analysis(seed=8), vocabulary))
    for seed in (9, 10):
        record(EventKind.RECEIPT, with_words(block_analysis(seed=seed), vocabulary))
    dispatch = with_words(block_analysis(seed=8, fingerprints=unit_vectors(seed=7)), vocabulary)
    words_off = replace(
        NETWORK_REACH_ONE, geometry=GeometryParameters(candidates_checked=1, word_candidates_checked=0)
    )

    without_words = MatchingService(session, words_off).identify(EventKind.DISPATCH, dispatch, model_id=MODEL)
    assert without_words.outcome is Outcome.NEW and without_words.pallet is None
    assert [evidence.pallet for evidence in without_words.checked] == [lookalike.pallet_id]

    matched = record(EventKind.DISPATCH, dispatch)
    assert matched.decision is MatchDecision.MATCHED and not matched.review
    assert matched.pallet_id == true_pallet.pallet_id
    assert matched.verification is not None and matched.verification.candidates_checked >= 2
    assert matched.verification.confirmed_blocks == 6
    found = {c.pallet_id: c for c in matched.candidates}
    assert found[true_pallet.pallet_id].inliers == matched.verification.inliers
    assert found[true_pallet.pallet_id].votes == 0, "the network voted for the lookalike"
    assert abs(found[true_pallet.pallet_id].score) < 0.2, "its fingerprints do not resemble the dispatch's"
    assert matched.votes == 0 and matched.score == found[true_pallet.pallet_id].score


def test_the_word_search_runs_only_when_the_network_gives_no_clear_match(
    record: Record, connection: Connection, vocabulary: VisualVocabulary
) -> None:
    statements: list[str] = []

    def note_word_reads(*args: object) -> None:
        sql = str(args[2])
        if sql.lstrip().startswith("SELECT") and "block_words.words" in sql:  # not the indexer's
            statements.append(sql)

    event.listen(connection, "before_cursor_execute", note_word_reads)
    reach_three = replace(
        NETWORK_REACH_ONE, shortlist_size=3, geometry=GeometryParameters(candidates_checked=3)
    )
    pallet = record(EventKind.RECEIPT, with_words(block_analysis(seed=17), vocabulary), reach_three)
    for seed in (18, 19):
        record(EventKind.RECEIPT, with_words(block_analysis(seed=seed), vocabulary), reach_three)
    statements.clear()

    clear = record(EventKind.DISPATCH, with_words(block_analysis(seed=17), vocabulary), reach_three)

    assert clear.decision is MatchDecision.MATCHED and clear.pallet_id == pallet.pallet_id
    assert statements == [], "the network's candidates sufficed"
    statements.clear()

    unknown = record(EventKind.DISPATCH, with_words(block_analysis(seed=20), vocabulary), reach_three)

    assert unknown.decision is MatchDecision.REGISTERED
    assert len(statements) == 2 and "LATERAL" in statements[0], "the word k-NN, then the pallets' words"


def test_the_word_search_runs_with_its_own_ef_search(
    record: Record, session: Session, vocabulary: VisualVocabulary
) -> None:
    """The word k-NN sets ``words_ef_search`` for its statement; a clear network match never changes the
    network search's ``ef_search`` (both are ``SET LOCAL``: the transaction shows the last one)."""
    config = replace(
        NETWORK_REACH_ONE,
        shortlist_size=3,
        ef_search=37,
        words_ef_search=23,
        geometry=GeometryParameters(candidates_checked=3),
    )
    known = with_words(block_analysis(seed=21), vocabulary)
    record(EventKind.RECEIPT, known, config)
    record(EventKind.RECEIPT, with_words(block_analysis(seed=22), vocabulary), config)
    service = MatchingService(session, config)

    clear = service.identify(EventKind.DISPATCH, known, model_id=MODEL)
    assert clear.outcome is Outcome.MATCHED
    assert session.execute(text("SHOW hnsw.ef_search")).scalar_one() == "37"

    unknown = service.identify(
        EventKind.DISPATCH, with_words(block_analysis(seed=23), vocabulary), model_id=MODEL
    )
    assert unknown.outcome is Outcome.NEW
    assert session.execute(text("SHOW hnsw.ef_search")).scalar_one() == "23"


def test_a_returning_pallet_is_received_through_its_words_but_not_while_in_stock(
    record: Record, vocabulary: VisualVocabulary
) -> None:
    """The lookalike's fingerprints are the receipt's, its blocks another pallet's (seed 11)."""
    pallet = record(EventKind.RECEIPT, with_words(block_analysis(seed=11), vocabulary))
    lookalike = record(
        EventKind.RECEIPT, with_words(block_analysis(seed=13, fingerprints=unit_vectors(12)), vocabulary)
    )
    assert (
        record(EventKind.DISPATCH, with_words(block_analysis(seed=11), vocabulary)).pallet_id
        == pallet.pallet_id
    )
    assert (
        record(
            EventKind.DISPATCH, with_words(block_analysis(seed=13, fingerprints=unit_vectors(12)), vocabulary)
        ).pallet_id
        == lookalike.pallet_id
    )
    returning = with_words(block_analysis(seed=11, fingerprints=unit_vectors(seed=12)), vocabulary)

    received = record(EventKind.RECEIPT, returning)
    assert received.decision is MatchDecision.MATCHED and received.pallet_id == pallet.pallet_id

    again = record(EventKind.RECEIPT, returning)
    assert again.decision is MatchDecision.REGISTERED and again.pallet_id != pallet.pallet_id
    assert again.verification is not None and again.verification.candidates_checked == 1, "the lookalike"
    assert [c.pallet_id for c in again.candidates] == [lookalike.pallet_id]


def test_reindex_fills_the_words_of_rows_without_them_from_their_local_features(
    record: Record, session: Session, session_factory: Callable[[], Session], vocabulary: VisualVocabulary
) -> None:
    current = record(EventKind.RECEIPT, with_words(block_analysis(seed=15), vocabulary))
    stale = record(EventKind.RECEIPT, with_words(block_analysis(seed=14), vocabulary))
    session.execute(
        update(FingerprintWords)
        .where(
            FingerprintWords.fingerprint_id.in_(
                select(Fingerprint.id).where(Fingerprint.pallet_id == stale.pallet_id)
            )
        )
        .values(vocabulary_id="words-old")
    )
    without = record(EventKind.RECEIPT, block_analysis(seed=13))  # no words: the indexer does not run
    assert ReindexRepository(session).count_without_words(MODEL, vocabulary.vocabulary_id) == 12
    seen: list[tuple[int, int]] = []

    report = fill_visual_words(
        session_factory,
        model_id=MODEL,
        vocabulary=vocabulary,
        batch_size=5,
        progress=lambda *p: seen.append(p),
    )

    assert (report.fingerprints_filled, report.without_features) == (12, 0)
    assert seen == [(5, 12), (10, 12), (12, 12)]
    assert ReindexRepository(session).count_without_words(MODEL, vocabulary.vocabulary_id) == 0
    pending = with_words(block_analysis(seed=13), vocabulary).words
    assert pending is not None
    expected = pending.get()
    for (vocabulary_id, words), block in zip(
        stored_words(session, without.pallet_id), expected.per_block, strict=True
    ):
        assert vocabulary_id == vocabulary.vocabulary_id and words is not None
        np.testing.assert_array_equal(words.indices, block.indices)
    assert {v for v, _ in stored_words(session, stale.pallet_id)} == {vocabulary.vocabulary_id}
    assert {v for v, _ in stored_words(session, current.pallet_id)} == {vocabulary.vocabulary_id}
    again = fill_visual_words(session_factory, model_id=MODEL, vocabulary=vocabulary)
    assert again.fingerprints_filled == 0


def test_a_service_with_a_vocabulary_writes_the_words_of_new_and_older_blocks_after_the_commit(
    fresh_database: FreshDatabase,
    tiny_checkpoint: Path,
    words_checkpoint: Path,
    make_settings: SettingsFactory,
    vocabulary: VisualVocabulary,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    images = tmp_path / "images"
    model_id = read_metadata(words_checkpoint).model_id
    assert model_id == read_metadata(tiny_checkpoint).model_id, "the vocabulary is not part of the model id"
    vocabulary_id = vocabulary.vocabulary_id
    caplog.set_level(logging.INFO, logger="app")
    with fresh_database() as url:
        upgrade_to_head(url)
        with TestClient(create_app(make_settings(url, tiny_checkpoint, image_store=images))) as old:
            assert old.get("/readyz").json()["vocabulary"] is None
            assert "palletreid_word_index" not in old.get("/metrics").text, "no vocabulary, no indexer"
            for seed in (121, 122):
                post(old, "/v1/receipts", noise_blocks(seed, count=2))

        with TestClient(create_app(make_settings(url, words_checkpoint, image_store=images))) as served:
            ready = served.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert (
                ready.json()["vocabulary"] == vocabulary_id == read_metadata(words_checkpoint).vocabulary_id
            )
            assert ready.json()["decision_parameters"]["geometry"]["word_candidates_checked"] == 5
            dispatch = post(served, "/v1/dispatches", noise_blocks(122, count=2))
            assert dispatch["decision"] == "matched"
            engine = create_engine(url)
            pallet = uuid.UUID(dispatch["pallet_id"])

            def stored_now() -> list[tuple[str | None, SparseWords | None]]:
                with Session(bind=engine) as session:
                    return stored_words(session, pallet)

            # the receipt's blocks (recorded without a vocabulary) at start, the dispatch's after its commit
            wait_until(lambda: all(v == vocabulary_id for v, _ in stored_now()), "the words were written")
            stored = stored_now()
            metrics = served.get("/metrics").text
            assert "palletreid_word_index_pending_blocks 0" in metrics
            assert "palletreid_word_index_lag_seconds_count" in metrics
            with engine.connect() as connection:
                assert words_index_valid(connection, model_id, vocabulary_id), "built at start"
            with engine.begin() as connection:
                connection.execute(text(f"DROP INDEX {words_index_name(model_id, vocabulary_id)}"))
            not_ready = served.get("/readyz")
            assert not_ready.status_code == 503
            assert f"no valid HNSW index for the visual words {vocabulary_id}" in not_ready.json()["detail"]
        messages = [record.getMessage() for record in caplog.records]
        assert any(f"visual words {vocabulary_id}, block detector" in message for message in messages)
        assert len(stored) == 4, "the receipt's blocks, then the dispatch's"
        assert all(words is not None and len(words) for _, words in stored)

        with engine.begin() as connection:  # words lost (say, restored from a backup without them)
            connection.execute(text("DELETE FROM block_words"))
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("PALLETREID_IMAGE_STORE", str(images))
        assert main(["reindex", "--checkpoint", str(words_checkpoint), "--threads", "1"]) == 0
        out = capsys.readouterr().out
        assert (
            f"visual words {vocabulary_id}: 6 fingerprints filled from their local features, "
            "0 without local features (no words); their HNSW index built"
        ) in out
        with engine.connect() as connection:
            assert (
                ReindexRepository(Session(bind=connection)).count_without_words(model_id, vocabulary_id) == 0
            )
            assert words_index_valid(connection, model_id, vocabulary_id)
        engine.dispose()


def test_word_indexes_of_before_0010_go_and_the_service_builds_the_lighter_one_on_block_words(
    fresh_database: FreshDatabase,
    words_checkpoint: Path,
    make_settings: SettingsFactory,
    vocabulary: VisualVocabulary,
    tmp_path: Path,
) -> None:
    """Before 0008 the service built the word index on ``fingerprints`` with ``m`` 16; 0008 drops such
    indexes, 0010 the columns under them; the service then builds its lighter one over ``block_words``."""
    model_id = read_metadata(words_checkpoint).model_id
    vocabulary_id = vocabulary.vocabulary_id
    digest = words_index_name(model_id, vocabulary_id).removeprefix(WORDS_INDEX_PREFIX)
    old_name = "ix_fingerprints_hnsw_words_" + digest
    heavy = (
        f"CREATE INDEX {old_name} ON fingerprints USING hnsw "
        f"((visual_words::sparsevec({vocabulary.size})) sparsevec_ip_ops) "
        "WITH (m = 16, ef_construction = 64) "
        f"WHERE model_id = '{model_id}' AND vocabulary_id = '{vocabulary_id}'"
    )

    def options(url: str, name: str) -> list[str] | None:
        engine = create_engine(url)
        with engine.connect() as connection:
            found: list[str] | None = connection.execute(
                text("SELECT reloptions FROM pg_class WHERE relname = :name"), {"name": name}
            ).scalar_one_or_none()
        engine.dispose()
        return found

    with fresh_database() as url:
        command.upgrade(alembic_config(url), "0007")
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(text(heavy))
        engine.dispose()
        assert options(url, old_name) == ["m=16", "ef_construction=64"], "as the service built it before 0008"
        upgrade_to_head(url)
        assert options(url, old_name) is None
        settings = make_settings(url, words_checkpoint, image_store=tmp_path / "images")
        with TestClient(create_app(settings)) as served:
            assert served.get("/readyz").status_code == 200
        new_name = words_index_name(model_id, vocabulary_id)
        assert options(url, new_name) == [
            f"m={WORDS_HNSW_M}",
            f"ef_construction={WORDS_HNSW_EF_CONSTRUCTION}",
        ]
