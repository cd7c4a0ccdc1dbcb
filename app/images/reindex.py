"""Fingerprint the stored block images with another model, beside the model in service.

A new model's fingerprints are stored under its own ``model_id`` next to the old ones; the service keeps
identifying with its model (it only ever compares fingerprints of one model) until it is restarted with the
new one. Work goes event by event in id order and is committed per batch, so an interrupted run resumes
where it stopped: an event is done once it has fingerprints of the new model. Inference runs outside any
transaction; each batch is written under the identification lock with the events' *current* pallets, so a
merge or detach that ran meanwhile is respected.

Block images' features at a side-view block's scale (``GeometryParameters.side_scale_width``) are extracted
with the rest; those of fingerprints recorded without them (before revision 0009) are filled from their
stored images (:func:`fill_side_scale_features`); until then side views are matched with their own features.

Visual words (when the checkpoint carries a vocabulary) are computed from the stored local features, so rows
that lack them, or hold words of another vocabulary, are filled without their images
(:func:`fill_visual_words`; the service's word indexer does the same for what it records); until then the
word search does not find them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from sqlalchemy import ColumnElement, Engine, and_, bindparam, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.db.session import unit_of_work
from app.db.tables import BlockImage, Event, Fingerprint, FingerprintWords, Pallet, PalletStatus
from app.errors import ConfigurationError
from app.images.store import ImageStore
from app.matching.repository import FingerprintRepository, as_sparsevec, ensure_hnsw_index, ensure_words_index
from models.runtime.images import ImageRejectedError, decode_image
from models.runtime.local_features import LocalFeatures, extract
from models.runtime.visual_words import SparseWords, VisualVocabulary
from models.runtime.voting import GeometryParameters, side_scale_features

logger = logging.getLogger(__name__)

Embed = Callable[[Sequence[Image.Image]], np.ndarray]
Progress = Callable[[int, int], None]
"""Called with (items handled so far, items to handle in this run): events, or fingerprints for words."""

WORDS_BATCH_SIZE = 512
"""Fingerprints whose words are computed and written per transaction (about 3 s of quantising)."""


@dataclass(frozen=True, slots=True)
class ReindexReport:
    model_id: str
    events_fingerprinted: int
    fingerprints_added: int
    events_without_images: int
    """Events skipped because an image was deleted (retention) or unreadable: they stay without."""


@dataclass(frozen=True, slots=True)
class SideScaleReport:
    events_filled: int
    fingerprints_filled: int
    events_without_images: int
    """Events whose images were deleted (retention) or unreadable: their blocks stay without."""


@dataclass(frozen=True, slots=True)
class WordsReport:
    vocabulary_id: str
    fingerprints_filled: int
    without_features: int
    """Fingerprints of the model without local features (recorded before revision 0002): no words."""


@dataclass(frozen=True, slots=True)
class ModelCoverage:
    model_id: str
    pallets: int
    """Pallets (not merged) with at least one fingerprint of this model."""
    share: float
    """Of all pallets that are not merged."""


class ReindexRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def pending_events(self, model_id: str, *, after_id: int, limit: int) -> list[int]:
        """Events with stored images but no fingerprints of ``model_id``, in id order after ``after_id``."""
        has_images = exists().where(BlockImage.event_id == Event.id)
        done = exists().where(and_(Fingerprint.event_id == Event.id, Fingerprint.model_id == model_id))
        return list(
            self._session.scalars(
                select(Event.id).where(Event.id > after_id, has_images, ~done).order_by(Event.id).limit(limit)
            )
        )

    def count_pending(self, model_id: str) -> int:
        has_images = exists().where(BlockImage.event_id == Event.id)
        done = exists().where(and_(Fingerprint.event_id == Event.id, Fingerprint.model_id == model_id))
        return self._session.scalar(select(func.count()).select_from(Event).where(has_images, ~done)) or 0

    def images(self, event_ids: Sequence[int]) -> dict[int, list[BlockImage]]:
        rows = self._session.scalars(
            select(BlockImage)
            .where(BlockImage.event_id.in_(list(event_ids)))
            .order_by(BlockImage.event_id, BlockImage.position)
        )
        grouped: dict[int, list[BlockImage]] = {}
        for row in rows:
            grouped.setdefault(row.event_id, []).append(row)
        return grouped

    def from_side_views(self, event_ids: Sequence[int]) -> set[int]:
        """Those of ``event_ids`` whose blocks were cut out of side views."""
        chosen = select(Event.id).where(Event.id.in_(list(event_ids)), Event.from_side_views)
        return set(self._session.scalars(chosen))

    def lacking_side_scale(self, model_id: str, *, after_id: int, limit: int) -> list[int]:
        """Block-image events with fingerprints of ``model_id`` but no side-scale features, in id order."""
        return list(
            self._session.scalars(
                select(Fingerprint.event_id)
                .join(Event, Event.id == Fingerprint.event_id)
                .where(Fingerprint.event_id > after_id, _lacking_side_scale(model_id))
                .group_by(Fingerprint.event_id)
                .order_by(Fingerprint.event_id)
                .limit(limit)
            )
        )

    def count_lacking_side_scale(self, model_id: str) -> int:
        """Events counted as by :meth:`lacking_side_scale`."""
        return (
            self._session.scalar(
                select(func.count(Fingerprint.event_id.distinct()))
                .join(Event, Event.id == Fingerprint.event_id)
                .where(_lacking_side_scale(model_id))
            )
            or 0
        )

    def store_side_scale(self, model_id: str, features: Mapping[int, Sequence[LocalFeatures]]) -> int:
        """Set the side-scale features of the blocks of several events (by event, in position order) that
        still lack them; returns the fingerprints set."""
        statement = (
            update(Fingerprint)
            .where(
                Fingerprint.event_id == bindparam("event"),
                Fingerprint.position == bindparam("block"),
                Fingerprint.model_id == model_id,
                Fingerprint.side_scale_features.is_(None),
            )
            .values(side_scale_features=bindparam("features"))
        )
        rows = [
            {"event": event_id, "block": position, "features": block.to_bytes()}
            for event_id, blocks in features.items()
            for position, block in enumerate(blocks)
        ]
        if not rows:
            return 0
        return self._session.connection().execute(statement, rows).rowcount

    def current_pallets(self, event_ids: Sequence[int]) -> dict[int, uuid.UUID]:
        rows = self._session.execute(select(Event.id, Event.pallet_id).where(Event.id.in_(list(event_ids))))
        return {event_id: pallet_id for event_id, pallet_id in rows}

    def already_done(self, event_ids: Sequence[int], model_id: str) -> set[int]:
        rows = self._session.scalars(
            select(Fingerprint.event_id)
            .where(Fingerprint.event_id.in_(list(event_ids)), Fingerprint.model_id == model_id)
            .distinct()
        )
        return set(rows)

    def count_without_words(self, model_id: str, vocabulary_id: str) -> int:
        """Fingerprints of ``model_id`` with local features but no words of ``vocabulary_id``."""
        return (
            self._session.scalar(
                select(func.count()).select_from(Fingerprint).where(_lacking_words(model_id, vocabulary_id))
            )
            or 0
        )

    def count_without_features(self, model_id: str) -> int:
        return (
            self._session.scalar(
                select(func.count())
                .select_from(Fingerprint)
                .where(Fingerprint.model_id == model_id, Fingerprint.local_features.is_(None))
            )
            or 0
        )

    def lacking_words(
        self,
        model_id: str,
        vocabulary_id: str,
        *,
        after_id: int,
        limit: int,
        through_id: int | None = None,
        among: Collection[int] | None = None,
    ) -> list[tuple[int, bytes]]:
        """(id, local features) of fingerprints that lack words of ``vocabulary_id``, in id order: ids above
        ``after_id``, up to ``through_id`` and only those ``among`` when given."""
        statement = select(Fingerprint.id, Fingerprint.local_features).where(
            Fingerprint.id > after_id, _lacking_words(model_id, vocabulary_id)
        )
        if through_id is not None:
            statement = statement.where(Fingerprint.id <= through_id)
        if among is not None:
            statement = statement.where(Fingerprint.id.in_(list(among)))
        rows = self._session.execute(statement.order_by(Fingerprint.id).limit(limit))
        return [(fingerprint_id, data) for fingerprint_id, data in rows if data is not None]

    def last_fingerprint_id(self) -> int:
        """The highest fingerprint id committed so far (0 without fingerprints)."""
        return self._session.scalar(select(func.max(Fingerprint.id))) or 0

    def store_words(self, model_id: str, vocabulary_id: str, words: Mapping[int, SparseWords]) -> None:
        """Write the words of several fingerprints (by id) of ``model_id``, computed with ``vocabulary_id``,
        in one statement; words of another vocabulary are replaced."""
        if not words:
            return
        statement = insert(FingerprintWords).values(
            [
                {
                    "fingerprint_id": fingerprint_id,
                    "model_id": model_id,
                    "vocabulary_id": vocabulary_id,
                    "words": as_sparsevec(block),
                }
                for fingerprint_id, block in words.items()
            ]
        )
        self._session.execute(
            statement.on_conflict_do_update(
                index_elements=[FingerprintWords.fingerprint_id],
                set_={"vocabulary_id": statement.excluded.vocabulary_id, "words": statement.excluded.words},
            )
        )

    def coverage_of(self, model_id: str) -> ModelCoverage:
        """The share of pallets (not merged) that have fingerprints of ``model_id`` (1.0 without pallets)."""
        for item in self.coverage():
            if item.model_id == model_id:
                return item
        return ModelCoverage(model_id=model_id, pallets=0, share=0.0 if self._live_pallets() else 1.0)

    def _live_pallets(self) -> int:
        return (
            self._session.scalar(
                select(func.count()).select_from(Pallet).where(Pallet.status != PalletStatus.MERGED.value)
            )
            or 0
        )

    def coverage(self) -> list[ModelCoverage]:
        """Per model, the share of pallets (not merged) that have its fingerprints."""
        total = self._live_pallets()
        rows = self._session.execute(
            select(Fingerprint.model_id, func.count(Fingerprint.pallet_id.distinct()))
            .group_by(Fingerprint.model_id)
            .order_by(Fingerprint.model_id)
        ).all()
        return [
            ModelCoverage(model_id=model_id, pallets=pallets, share=pallets / total if total else 1.0)
            for model_id, pallets in rows
        ]


def reindex(
    session_factory: Callable[[], Session],
    store: ImageStore,
    *,
    model_id: str,
    embed: Embed,
    geometry: GeometryParameters,
    batch_size: int = 32,
    max_batches: int | None = None,
    progress: Progress | None = None,
    vocabulary: VisualVocabulary | None = None,
) -> ReindexReport:
    """Add fingerprints (and local features, and with a ``vocabulary`` visual words) of ``model_id`` for
    every event that has stored images and none of its fingerprints yet, their local features extracted as
    the service does with ``geometry`` (blocks cut out of side views with more corners, block images also at
    a side-view block's scale). ``max_batches`` stops early (the next run resumes)."""
    with session_factory() as session:
        total = ReindexRepository(session).count_pending(model_id)
    handled = fingerprinted = added = skipped = batches = 0
    after_id = 0
    while max_batches is None or batches < max_batches:
        with session_factory() as session:
            repository = ReindexRepository(session)
            event_ids = repository.pending_events(model_id, after_id=after_id, limit=batch_size)
            stored = repository.images(event_ids)
            from_sides = repository.from_side_views(event_ids)
        if not event_ids:
            break
        after_id = event_ids[-1]
        batches += 1
        decoded: dict[int, list[Image.Image]] = {}
        for event_id in event_ids:
            images = _load(store, stored.get(event_id, []))
            if images is None:
                skipped += 1
            else:
                decoded[event_id] = images
        if decoded:
            order = list(decoded)
            flat = [image for event_id in order for image in decoded[event_id]]
            vectors = embed(flat)
            features = [
                extract(image, geometry.side_view_extractor if event_id in from_sides else geometry.extractor)
                for event_id in order
                for image in decoded[event_id]
            ]
            at_side_scale = [
                side_scale_features(image, geometry)
                if event_id not in from_sides and geometry.side_scale_width
                else None
                for event_id in order
                for image in decoded[event_id]
            ]
            fingerprinted_now, added_now = _write(
                session_factory, model_id, order, decoded, vectors, features, at_side_scale, vocabulary
            )
            fingerprinted += fingerprinted_now
            added += added_now
        handled += len(event_ids)
        if progress is not None:
            progress(handled, total)
    return ReindexReport(
        model_id=model_id,
        events_fingerprinted=fingerprinted,
        fingerprints_added=added,
        events_without_images=skipped,
    )


def fill_side_scale_features(
    session_factory: Callable[[], Session],
    store: ImageStore,
    *,
    model_id: str,
    geometry: GeometryParameters,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> SideScaleReport:
    """Extract the side-scale features of every block-image event whose fingerprints of ``model_id`` lack
    them, from its stored images; committed per batch of ``batch_size`` events, so an interrupted run
    resumes. Nothing to do when ``geometry.side_scale_width`` is 0."""
    if geometry.side_scale_width == 0:
        return SideScaleReport(events_filled=0, fingerprints_filled=0, events_without_images=0)
    with session_factory() as session:
        total = ReindexRepository(session).count_lacking_side_scale(model_id)
    handled = events = filled = skipped = 0
    after_id = 0
    while True:
        with session_factory() as session:
            repository = ReindexRepository(session)
            event_ids = repository.lacking_side_scale(model_id, after_id=after_id, limit=batch_size)
            stored = repository.images(event_ids)
        if not event_ids:
            break
        after_id = event_ids[-1]
        features: dict[int, list[LocalFeatures]] = {}
        for event_id in event_ids:
            images = _load(store, stored.get(event_id, []))
            if images is None:
                skipped += 1
            else:
                features[event_id] = [side_scale_features(image, geometry) for image in images]
        with unit_of_work(session_factory) as session:
            filled += ReindexRepository(session).store_side_scale(model_id, features)
        events += len(features)
        handled += len(event_ids)
        if progress is not None:
            progress(handled, total)
    return SideScaleReport(events_filled=events, fingerprints_filled=filled, events_without_images=skipped)


def fill_visual_words(
    session_factory: Callable[[], Session],
    *,
    model_id: str,
    vocabulary: VisualVocabulary,
    batch_size: int = WORDS_BATCH_SIZE,
    progress: Progress | None = None,
) -> WordsReport:
    """Compute the visual words of every fingerprint of ``model_id`` that has none of ``vocabulary`` (none
    at all, or another vocabulary's) from its stored local features; committed per batch, so an
    interrupted run resumes. Rows without local features cannot have words and are counted."""
    vocabulary_id = vocabulary.vocabulary_id
    with session_factory() as session:
        repository = ReindexRepository(session)
        total = repository.count_without_words(model_id, vocabulary_id)
        without_features = repository.count_without_features(model_id)
    filled, _ = write_missing_words(
        session_factory,
        model_id=model_id,
        vocabulary=vocabulary,
        batch_size=batch_size,
        progress=(lambda written: progress(written, total)) if progress is not None else None,
    )
    return WordsReport(
        vocabulary_id=vocabulary_id, fingerprints_filled=filled, without_features=without_features
    )


def write_missing_words(
    session_factory: Callable[[], Session],
    *,
    model_id: str,
    vocabulary: VisualVocabulary,
    after_id: int = 0,
    through_id: int | None = None,
    among: Collection[int] | None = None,
    batch_size: int = WORDS_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> tuple[int, int]:
    """Write the words of the fingerprints of ``model_id`` that lack words of ``vocabulary`` (ids above
    ``after_id``, up to ``through_id``, only those ``among`` when given) from their stored local features,
    one transaction per batch in id order, until none is left or ``stopped()``. Returns how many were
    written and the last id handled (``after_id`` if none); ``progress`` gets the count after each batch."""
    vocabulary_id = vocabulary.vocabulary_id
    written = 0
    while not stopped():
        with unit_of_work(session_factory) as session:
            repository = ReindexRepository(session)
            rows = repository.lacking_words(
                model_id,
                vocabulary_id,
                after_id=after_id,
                limit=batch_size,
                through_id=through_id,
                among=among,
            )
            repository.store_words(
                model_id,
                vocabulary_id,
                {block: vocabulary.encode(LocalFeatures.from_bytes(data)) for block, data in rows},
            )
        if not rows:
            break
        after_id = rows[-1][0]
        written += len(rows)
        if progress is not None:
            progress(written)
    return written, after_id


def _lacking_words(model_id: str, vocabulary_id: str) -> ColumnElement[bool]:
    has_words = exists().where(
        FingerprintWords.fingerprint_id == Fingerprint.id, FingerprintWords.vocabulary_id == vocabulary_id
    )
    return and_(Fingerprint.model_id == model_id, Fingerprint.local_features.is_not(None), ~has_words)


def _lacking_side_scale(model_id: str) -> ColumnElement[bool]:
    return and_(
        Fingerprint.model_id == model_id,
        Fingerprint.side_scale_features.is_(None),
        ~Event.from_side_views,
    )


def _load(store: ImageStore, rows: Sequence[BlockImage]) -> list[Image.Image] | None:
    """The event's block images in position order, or ``None`` if any is missing or unreadable."""
    if not rows or [row.position for row in rows] != list(range(len(rows))):
        return None
    images = []
    for row in rows:
        data = store.read(row.sha256)
        if data is None:
            return None
        try:
            images.append(decode_image(data, name=f"event {row.event_id} block {row.position}"))
        except ImageRejectedError as error:
            logger.warning("cannot re-read a stored image: %s", error)
            return None
    return images


def _write(
    session_factory: Callable[[], Session],
    model_id: str,
    order: Sequence[int],
    decoded: dict[int, list[Image.Image]],
    vectors: np.ndarray,
    features: Sequence[LocalFeatures],
    at_side_scale: Sequence[LocalFeatures | None],
    vocabulary: VisualVocabulary | None,
) -> tuple[int, int]:
    """Insert one batch under the identification lock, with each event's current pallet."""
    with unit_of_work(session_factory) as session:
        FingerprintRepository(session).lock_identification()
        repository = ReindexRepository(session)
        pallets = repository.current_pallets(order)
        done = repository.already_done(order, model_id)  # a concurrent run got there first
        rows: list[Fingerprint] = []
        added: list[LocalFeatures] = []
        events = 0
        offset = 0
        for event_id in order:
            count = len(decoded[event_id])
            if event_id not in done:
                events += 1
                rows.extend(
                    Fingerprint(
                        pallet_id=pallets[event_id],
                        event_id=event_id,
                        model_id=model_id,
                        position=position,
                        embedding=vectors[offset + position],
                        local_features=features[offset + position].to_bytes(),
                        side_scale_features=_bytes_or_none(at_side_scale[offset + position]),
                    )
                    for position in range(count)
                )
                added.extend(features[offset : offset + count])
            offset += count
        FingerprintRepository(session).add_all(rows)
        if vocabulary is not None:
            repository.store_words(
                model_id,
                vocabulary.vocabulary_id,
                {row.id: vocabulary.encode(block) for row, block in zip(rows, added, strict=True)},
            )
    return events, len(rows)


def _bytes_or_none(features: LocalFeatures | None) -> bytes | None:
    return None if features is None else features.to_bytes()


class CoverageCache:
    """Coverage per model, recomputed at most every ``ttl_seconds``: it counts over all fingerprints, too
    much work for every readiness probe."""

    def __init__(self, ttl_seconds: float = 60.0) -> None:
        self._ttl = ttl_seconds
        self._lock = threading.Lock()
        self._value: list[ModelCoverage] | None = None
        self._computed_at = 0.0

    def current(self, session: Session) -> list[ModelCoverage]:
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._computed_at > self._ttl:
                self._value = ReindexRepository(session).coverage()
                self._computed_at = now
            return self._value


def check_model_coverage(
    session_factory: Callable[[], Session], model_id: str, *, allow_partial: bool
) -> None:
    """Refuse (``ConfigurationError``) to serve a model without fingerprints of every known pallet: those
    pallets could no longer be identified. Unless ``allow_partial``; a database that cannot be asked yet is
    left to the readiness probe."""
    try:
        with session_factory() as session:
            coverage = ReindexRepository(session).coverage_of(model_id)
    except SQLAlchemyError as error:
        logger.warning("model coverage not checked (%s); see /readyz", type(error).__name__)
        return
    if coverage.share >= 1.0:
        return
    message = (
        f"model {model_id} has fingerprints of {coverage.pallets} pallets, "
        f"{100 * coverage.share:.1f} % of those known: the others could not be identified. "
        "Run `palletreid reindex --checkpoint <this model>` first, "
        "or set PALLETREID_ALLOW_PARTIAL_COVERAGE=true to serve anyway"
    )
    if not allow_partial:
        raise ConfigurationError(message)
    logger.warning("serving anyway (PALLETREID_ALLOW_PARTIAL_COVERAGE): %s", message)


START_INDEX_LOCK_TIMEOUT_S = 60.0
"""How long the start waits for transactions writing fingerprints before it gives up building an index."""


def ensure_serving_index(
    engine: Engine,
    model_id: str,
    dim: int,
    *,
    vocabulary: VisualVocabulary | None = None,
    lock_timeout_s: float = START_INDEX_LOCK_TIMEOUT_S,
) -> None:
    """At start: the HNSW index of the model in service (and of its visual words with ``vocabulary``), built
    if missing (a model that starts on an empty database, or whose reindex was interrupted before its
    index). The service starts anyway when it cannot be built (a database not migrated yet, or transactions
    writing fingerprints for longer than ``lock_timeout_s``): ``/readyz`` then reports the missing index
    instead of the start hanging."""
    try:
        ensure_hnsw_index(engine, model_id, dim, lock_timeout_s=lock_timeout_s)
        if vocabulary is not None:
            ensure_words_index(engine, model_id, vocabulary, lock_timeout_s=lock_timeout_s)
    except SQLAlchemyError as error:
        logger.warning(
            "HNSW index of %s not built (%s); /readyz stays not ready until it is: restart the service "
            "or run `palletreid reindex --checkpoint <this model>`",
            model_id,
            type(error).__name__,
        )


def log_side_scale_to_fill(session_factory: Callable[[], Session], model_id: str) -> None:
    """At start: how many block-image events of the model in service lack side-scale features (side views
    are matched against them with their own features until ``palletreid reindex`` fills them)."""
    try:
        with session_factory() as session:
            missing = ReindexRepository(session).count_lacking_side_scale(model_id)
    except SQLAlchemyError as error:
        logger.warning("events without side-scale features not counted (%s)", type(error).__name__)
        return
    if missing:
        logger.warning(
            "%d block-image events of %s have no side-scale features: side views are matched against them "
            "with their own features until `palletreid reindex --checkpoint <this model>` fills them",
            missing,
            model_id,
        )
