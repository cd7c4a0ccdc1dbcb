"""Keeping, serving and collecting the block images of events.

Who may delete a file. Files are content-addressed, so one file can back rows of several events, and a
request cannot tell from the file alone whether some other transaction is about to reference it. The rule:
a recording writes its images while it holds the identification lock (``app.matching.repository``), which
it keeps until its transaction ends; everything that deletes files (a failed recording cleaning up,
``palletreid gc``) does so under the same lock. So a file a recording *created* is referenced by no committed
row and by no other transaction until that recording ends: if it fails, it removes exactly those files before
its transaction (and the lock) ends. Only a crash, or a failure of the commit itself, can leave a file that no
row references; ``collect_garbage`` removes it, after checking under the lock that no row references it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app.db.session import unit_of_work
from app.db.tables import BlockImage
from app.errors import BlockImageNotFoundError
from app.images.repository import BlockImageRepository
from app.images.store import ImageStore, media_type_of
from app.matching.repository import FingerprintRepository

logger = logging.getLogger(__name__)

STALE_TEMPORARY_SECONDS = 3600.0
"""A temporary file this old belongs to a write that crashed (writes take milliseconds)."""


@dataclass(frozen=True, slots=True)
class ReceivedImage:
    """One uploaded block image, bytes exactly as received."""

    data: bytes
    media_type: str

    @classmethod
    def of(cls, data: bytes) -> ReceivedImage:
        """An image the loader accepted (JPEG, PNG or WebP), its media type read from its signature."""
        return cls(data=data, media_type=media_type_of(data))


class BlockImageRecorder:
    """Stores the block images of the event a recording creates, or none of them if the recording fails.

    ``write`` must be called while the transaction holds the identification lock, and the whole request
    wrapped in ``removing_created_on_error`` (see the module docstring).
    """

    def __init__(self, session: Session, store: ImageStore, images: Sequence[ReceivedImage]) -> None:
        self._rows = BlockImageRepository(session)
        self._store = store
        self._images = list(images)
        self._created: list[str] = []

    def write(self, event_id: int) -> None:
        """Store the files durably and add one row per block position (flushed, not committed)."""
        rows = []
        for position, image in enumerate(self._images):
            digest, created = self._store.put(image.data)
            if created:
                self._created.append(digest)
            rows.append(
                BlockImage(
                    event_id=event_id,
                    position=position,
                    sha256=digest,
                    media_type=image.media_type,
                    size_bytes=len(image.data),
                )
            )
        self._rows.add_all(rows)

    @contextmanager
    def removing_created_on_error(self) -> Iterator[None]:
        """If the block raises, delete the files ``write`` created (the lock is still held) and re-raise."""
        try:
            yield
        except BaseException:
            for digest in self._created:
                self._store.delete(digest)
            if self._created:
                logger.info(
                    "recording failed: removed %d block image files it had written", len(self._created)
                )
            self._created.clear()
            raise


class BlockImageService:
    def __init__(self, session: Session, store: ImageStore) -> None:
        self._rows = BlockImageRepository(session)
        self._store = store

    def image(self, event_id: int, position: int) -> tuple[bytes, str]:
        """The bytes and media type of one block image; 404 if none was kept or it was deleted."""
        row = self._rows.get(event_id, position)
        if row is None:
            raise BlockImageNotFoundError(f"no stored image for block {position} of event {event_id}")
        data = self._store.read(row.sha256)
        if data is None:
            logger.warning(
                "block image %s of event %d is listed but its file is missing", row.sha256, event_id
            )
            raise BlockImageNotFoundError(f"the image of block {position} of event {event_id} was deleted")
        return data, row.media_type


@dataclass(frozen=True, slots=True)
class CollectionReport:
    """What ``collect_garbage`` deleted (or, in a dry run, would delete)."""

    expired_rows: int
    orphan_files: int
    orphan_bytes: int
    temporary_files: int
    dry_run: bool


def collect_garbage(
    session_factory: Callable[[], Session],
    store: ImageStore,
    *,
    now: datetime,
    retention_days: int | None,
    dry_run: bool = False,
    batch_size: int = 500,
) -> CollectionReport:
    """Delete image rows older than the retention, then every file no row references, then stale temporary
    files. Each batch is its own short transaction; files are only deleted under the identification lock."""
    cutoff = now - timedelta(days=retention_days) if retention_days is not None else None
    expired_rows = 0
    if cutoff is not None:
        if dry_run:
            with session_factory() as session:
                expired_rows = BlockImageRepository(session).count_recorded_before(cutoff)
        else:
            while True:
                with unit_of_work(session_factory) as session:
                    rows = BlockImageRepository(session)
                    events = rows.events_recorded_before(cutoff, limit=batch_size)
                    expired_rows += len(rows.delete_for_events(events))
                if len(events) < batch_size:
                    break

    orphan_files = orphan_bytes = 0
    stored = list(store.files())
    for start in range(0, len(stored), batch_size):
        batch = {item.sha256: item for item in stored[start : start + batch_size]}
        with unit_of_work(session_factory) as session:
            FingerprintRepository(session).lock_identification()
            referenced = BlockImageRepository(session).referenced(batch, recorded_since=cutoff)
            for digest, item in batch.items():
                if digest in referenced:
                    continue
                if dry_run or store.delete(digest):
                    orphan_files += 1
                    orphan_bytes += item.size_bytes

    temporary = store.stale_temporary_files(older_than_seconds=STALE_TEMPORARY_SECONDS)
    if not dry_run:
        for path in temporary:
            path.unlink(missing_ok=True)
    return CollectionReport(
        expired_rows=expired_rows,
        orphan_files=orphan_files,
        orphan_bytes=orphan_bytes,
        temporary_files=len(temporary),
        dry_run=dry_run,
    )
