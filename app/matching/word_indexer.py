"""Adds the visual words of newly recorded blocks right after their recording has committed.

A recording stores each block's fingerprint and local features; its visual words (the second source of
candidates, searched only when the network's candidates settle nothing) are written here, on a thread of
their own, so that a dispatch's answer does not wait for the words' HNSW index (inserting a block's ~480
words costs tens of milliseconds; docs/benchmarks.md). The words are computed from the stored local features
with the model's vocabulary, exactly as ``palletreid reindex`` fills them.

The indexer wakes when a transaction that added fingerprints commits (SQLAlchemy events on the service's
session factory hand it their ids) and at least every ``poll_seconds``. Each pass writes the words of the
fingerprints it was handed, then sweeps the rows committed since its last sweep (those other API processes
recorded, and any it was not handed): fingerprints are written under the identification lock, so the
highest id committed when a sweep starts bounds everything committed before it, and the next sweep starts
above it. The first sweep after start covers the whole table (blocks recorded while the service was down,
or whose words a crash lost). One process indexes at a time (a session-level advisory lock); the others
keep what they were handed and try again shortly.

Until its words are written, a block is found by its fingerprint and checked by its local features as
usual; only the word search does not see it yet, for the fraction of a second the indexer needs.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Collection

from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, UOWTransaction, sessionmaker

from app.db.session import build_session_factory
from app.db.tables import Fingerprint
from app.images.reindex import ReindexRepository, write_missing_words
from app.metrics.registry import Histogram
from models.runtime.visual_words import VisualVocabulary

logger = logging.getLogger(__name__)

WORD_INDEXER_LOCK_KEY = zlib.crc32(b"palletreid:word-indexer")
"""Key of the session-level advisory lock held while words are being written."""
BATCH_SIZE = 96
"""Fingerprints per transaction: 16 dispatches' blocks, about half a second of encoding and inserting."""
_ADDED_FINGERPRINTS = "palletreid.added_fingerprints"
WORDS_LAG_SECONDS = Histogram(
    "palletreid_word_index_lag_seconds",
    "Per block recorded by this process: from its recording's commit until its visual words were written "
    "(the word search misses it meanwhile).",
    (),
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


class WordIndexer:
    """Writes the missing visual words of ``model_id``'s blocks, on a daemon thread until stopped."""

    def __init__(
        self, engine: Engine, model_id: str, vocabulary: VisualVocabulary, *, poll_seconds: float
    ) -> None:
        self._engine = engine
        self._sessions = build_session_factory(engine)
        self._model_id = model_id
        self._vocabulary = vocabulary
        self._poll_seconds = poll_seconds
        self._swept_through = 0
        """Every fingerprint up to this id has been looked at by a sweep."""
        self._handed: dict[int, float] = {}
        """Ids of fingerprints this process committed whose words are not written yet, and when."""
        self._handed_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="word-indexer", daemon=True)
        self._last_warning = 0.0
        self._watched: sessionmaker[Session] | None = None

    def start(self, *, watched: sessionmaker[Session] | None = None) -> None:
        """Start the thread; it also wakes whenever a session of ``watched`` commits new fingerprints."""
        if watched is not None:
            event.listen(watched, "after_flush", _note_added_fingerprints)
            event.listen(watched, "after_commit", self._after_commit)
            self._watched = watched
        self._thread.start()

    def notify(self, fingerprint_ids: Collection[int] = ()) -> None:
        """Fingerprints were committed (those of ``fingerprint_ids`` among them): index their words now."""
        now = time.monotonic()
        with self._handed_lock:
            self._handed.update(dict.fromkeys(fingerprint_ids, now))
        self._wake.set()

    @property
    def pending_blocks(self) -> int:
        """Blocks this process committed whose words it has not written yet."""
        with self._handed_lock:
            return len(self._handed)

    def stop(self, timeout: float = 10.0) -> None:
        if self._watched is not None:
            event.remove(self._watched, "after_flush", _note_added_fingerprints)
            event.remove(self._watched, "after_commit", self._after_commit)
            self._watched = None
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def run_once(self) -> int | None:
        """Write the words of the fingerprints handed over, then sweep those committed since the last sweep;
        how many were written, or ``None`` when another process is indexing now."""
        with self._engine.connect() as lock:
            if not lock.execute(select(func.pg_try_advisory_lock(WORD_INDEXER_LOCK_KEY))).scalar():
                lock.rollback()
                return None
            try:
                return self._index_new_blocks()
            finally:
                lock.execute(select(func.pg_advisory_unlock(WORD_INDEXER_LOCK_KEY)))
                lock.commit()

    def _index_new_blocks(self) -> int:
        with self._handed_lock:
            handed, self._handed = self._handed, {}
        try:
            written = self._write(among=handed) if handed else 0
        except BaseException:
            with self._handed_lock:  # tried again on the next pass
                self._handed.update(handed)
            raise
        now = time.monotonic()
        for handed_at in handed.values():
            WORDS_LAG_SECONDS.observe(now - handed_at)
        with self._sessions() as session:
            through = ReindexRepository(session).last_fingerprint_id()
        swept = self._write(after_id=self._swept_through, through_id=through)
        if not self._stop.is_set():
            self._swept_through = max(self._swept_through, through)
        if swept > BATCH_SIZE:
            logger.info(
                "visual words of %d blocks of %s written (recorded without them)", swept, self._model_id
            )
        return written + swept

    def _write(
        self, *, after_id: int = 0, through_id: int | None = None, among: Collection[int] | None = None
    ) -> int:
        written, _ = write_missing_words(
            self._sessions,
            model_id=self._model_id,
            vocabulary=self._vocabulary,
            after_id=after_id,
            through_id=through_id,
            among=among,
            batch_size=BATCH_SIZE,
            stopped=self._stop.is_set,
        )
        return written

    def _after_commit(self, session: Session) -> None:
        added = session.info.pop(_ADDED_FINGERPRINTS, None)
        if added:
            self.notify(added)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                written = self.run_once()
            except Exception as error:  # the database is away or not migrated yet: try again later
                written = 0
                if time.monotonic() - self._last_warning > 60:
                    self._last_warning = time.monotonic()
                    logger.warning("word indexer: %s (retrying)", error)
            if written is None:  # another process is indexing: look again shortly
                self._stop.wait(min(self._poll_seconds, 0.5))
                continue
            self._wake.wait(self._poll_seconds)
            self._wake.clear()


def _note_added_fingerprints(session: Session, _: UOWTransaction) -> None:
    """After a flush (ids assigned, objects still listed as new): remember the fingerprints it inserted."""
    added = [item.id for item in session.new if isinstance(item, Fingerprint)]
    if added:
        session.info.setdefault(_ADDED_FINGERPRINTS, []).extend(added)
