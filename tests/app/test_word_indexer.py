"""The word indexer writes the visual words of recorded blocks after their commit, on its own thread, one
process at a time. Real PostgreSQL (committed data: the indexer has its own connections), real local
features of noise images, a real (tiny) vocabulary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_testkit import FreshDatabase, block_analysis, noise_block_features, wait_until
from sqlalchemy import Engine, create_engine, func, select, text

from app.db.migrations import upgrade_to_head
from app.db.session import build_session_factory, unit_of_work
from app.db.tables import EventKind, FingerprintWords
from app.matching.service import EventDetails, MatchingConfig, MatchingService
from app.matching.word_indexer import WORD_INDEXER_LOCK_KEY, WORDS_LAG_SECONDS, WordIndexer
from models.runtime.visual_words import VisualVocabulary
from models.runtime.voting import VotingThresholds
from models.training.vocabulary import VocabularyConfig, learn_vocabulary

MODEL = "model-indexed"
CONFIG = MatchingConfig(
    thresholds=VotingThresholds(block_threshold=0.8, min_votes=2, score_threshold=0.3),
    top_k=6,
    shortlist_size=3,
    captures_per_pallet=3,
    ef_search=40,
    words_ef_search=40,
    max_candidates=5,
)
NEVER_POLLS = 3600.0
"""The indexer's poll interval in these tests: only a commit wakes it."""


@pytest.fixture(scope="module")
def vocabulary() -> VisualVocabulary:
    training = [features.descriptors for seed in range(100, 104) for features in noise_block_features(seed)]
    return learn_vocabulary(training, VocabularyConfig(branches=8, leaves=16, iterations=5))


@pytest.fixture
def engine(fresh_database: FreshDatabase) -> Iterator[Engine]:
    with fresh_database() as url:
        upgrade_to_head(url)
        engine = create_engine(url)
        yield engine
        engine.dispose()


def words_written(engine: Engine, model_id: str = MODEL) -> int:
    with engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(FingerprintWords).where(FingerprintWords.model_id == model_id)
        ).scalar_one()


def test_a_committed_recording_wakes_the_indexer_and_a_rolled_back_one_leaves_nothing(
    engine: Engine, vocabulary: VisualVocabulary
) -> None:
    sessions = build_session_factory(engine)
    indexer = WordIndexer(engine, MODEL, vocabulary, poll_seconds=NEVER_POLLS)
    indexer.start(watched=sessions)
    try:
        wait_until(lambda: indexer.run_once() == 0, "the first pass over the empty table")
        with pytest.raises(RuntimeError), unit_of_work(sessions) as session:
            MatchingService(session, CONFIG).record(
                EventKind.RECEIPT, block_analysis(seed=1), model_id=MODEL, details=EventDetails()
            )
            raise RuntimeError("the request failed after its fingerprints were flushed")
        lagged = WORDS_LAG_SECONDS.count()
        with unit_of_work(sessions) as session:
            MatchingService(session, CONFIG).record(
                EventKind.RECEIPT, block_analysis(seed=2), model_id=MODEL, details=EventDetails()
            )
        wait_until(lambda: words_written(engine) == 6, "the committed receipt's six blocks got words")
        wait_until(lambda: WORDS_LAG_SECONDS.count() == lagged + 6, "each block's lag observed")
        assert indexer.pending_blocks == 0
    finally:
        indexer.stop()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM fingerprints")).scalar_one() == 6
    assert words_written(engine, "another-model") == 0


def test_one_process_indexes_at_a_time_and_older_blocks_are_found_by_the_first_pass(
    engine: Engine, vocabulary: VisualVocabulary
) -> None:
    sessions = build_session_factory(engine)
    for seed in (3, 4):
        with unit_of_work(sessions) as session:
            MatchingService(session, CONFIG).record(
                EventKind.RECEIPT, block_analysis(seed=seed), model_id=MODEL, details=EventDetails()
            )
    indexer = WordIndexer(engine, MODEL, vocabulary, poll_seconds=NEVER_POLLS)
    with engine.connect() as other_process:
        assert other_process.execute(select(func.pg_try_advisory_lock(WORD_INDEXER_LOCK_KEY))).scalar()
        assert indexer.run_once() is None, "another process holds the indexer's lock"
        other_process.execute(select(func.pg_advisory_unlock(WORD_INDEXER_LOCK_KEY)))
        other_process.commit()
    assert indexer.run_once() == 12
    assert indexer.run_once() == 0
    assert words_written(engine) == 12
