"""Fingerprint storage and nearest-neighbour search in pgvector; the only place that selects fingerprints."""

from __future__ import annotations

import hashlib
import logging
import uuid
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import groupby

import numpy as np
from pgvector import HalfVector, SparseVector
from pgvector.sqlalchemy import HALFVEC, SPARSEVEC
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    LargeBinary,
    Select,
    String,
    and_,
    bindparam,
    cast,
    func,
    literal,
    null,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql.selectable import TableValuedAlias

from app.db.tables import Event, Fingerprint, FingerprintWords, Pallet
from models.runtime.local_features import LocalFeatures
from models.runtime.visual_words import SparseWords, VisualVocabulary
from models.runtime.voting import CaptureFeatures, unit_rows

logger = logging.getLogger(__name__)

IDENTIFICATION_LOCK_KEY = zlib.crc32(b"palletreid:identification")
"""Key of the transaction-level advisory lock that serialises identification + registration."""

INDEX_BUILD_LOCK_KEY = zlib.crc32(b"palletreid:hnsw-index-build")
"""Key of the session-level advisory lock under which a model's HNSW index is checked and built."""

HNSW_INDEX_PREFIX = "ix_fingerprints_hnsw_"
WORDS_INDEX_PREFIX = "ix_block_words_hnsw_"
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
WORDS_HNSW_M = 8
WORDS_HNSW_EF_CONSTRUCTION = 32
"""The visual-word index is built lighter than the fingerprints': each block's ~480 words make an HNSW
insert cost 20-25 ms of sparse inner products at ``m`` 16 / ``ef_construction`` 64 (docs/benchmarks.md, "The
storage step"); the word indexer pays it now, after the recording."""
MAX_INDEXED_DIM = 4000
"""pgvector indexes ``halfvec`` of up to 4 000 dimensions."""


@dataclass(frozen=True, slots=True)
class StoredNeighbour:
    """A stored block fingerprint near a query block, with its pallet's current status."""

    pallet_id: uuid.UUID
    pallet_status: str
    similarity: float


@dataclass(frozen=True, slots=True)
class StoredCapture:
    """The fingerprints one event recorded for a pallet (unit rows, blocks in upload order)."""

    event_id: int
    fingerprints: np.ndarray


@dataclass(frozen=True, slots=True)
class StoredWords:
    """The visual words one event recorded for a pallet, by block position (``None``: a block without)."""

    event_id: int
    words: list[SparseWords | None]


class FingerprintRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def lock_identification(self) -> None:
        """Take the identification lock until the end of the transaction (``pg_advisory_xact_lock``)."""
        self._session.execute(select(func.pg_advisory_xact_lock(IDENTIFICATION_LOCK_KEY)))

    def configure_search(self, *, ef_search: int) -> None:
        """HNSW search settings for this transaction only (``SET LOCAL``).

        ``relaxed_order`` iterative scans keep walking the graph while the ``model_id`` filter discards
        rows, so a query still gets its k neighbours when other models' fingerprints crowd the index;
        the voting rule does not depend on neighbour order.
        """
        settings = hnsw_search_settings(ef_search)
        self._session.execute(
            select(*(func.set_config(name, value, True) for name, value in settings.items()))
        )

    def nearest_per_block(
        self, embeddings: np.ndarray, *, model_id: str, limit: int
    ) -> list[list[StoredNeighbour]]:
        """For each row of ``embeddings``, what :meth:`nearest` finds for it; all rows in one statement."""
        per_block: list[list[StoredNeighbour]] = [[] for _ in range(len(embeddings))]
        if not len(embeddings):
            return per_block
        rows = self._session.execute(nearest_per_block_query(embeddings, model_id=model_id, limit=limit))
        for block, pallet_id, status, distance in rows:
            per_block[block - 1].append(
                StoredNeighbour(pallet_id=pallet_id, pallet_status=status, similarity=1.0 - float(distance))
            )
        return per_block

    def nearest(self, embedding: np.ndarray, *, model_id: str, limit: int) -> list[StoredNeighbour]:
        """The ``limit`` stored fingerprints of ``model_id`` closest (cosine) to ``embedding``."""
        rows = self._session.execute(nearest_query(embedding, model_id=model_id, limit=limit)).all()
        return [
            StoredNeighbour(pallet_id=pallet_id, pallet_status=status, similarity=1.0 - float(distance))
            for pallet_id, status, distance in rows
        ]

    def nearest_words_per_block(
        self, words: Sequence[SparseWords], *, model_id: str, vocabulary_id: str, limit: int
    ) -> list[list[StoredNeighbour]]:
        """For each query block, the ``limit`` stored blocks of ``model_id`` sharing the most visual words
        (cosine of the word vectors, through the words' HNSW index); all blocks in one statement. A block
        without words has no neighbours, and neither has a stored block any word in common with the query.
        """
        per_block: list[list[StoredNeighbour]] = [[] for _ in range(len(words))]
        searched = [position for position, block in enumerate(words) if len(block)]
        if not searched:
            return per_block
        statement = nearest_words_per_block_query(
            [words[position] for position in searched],
            model_id=model_id,
            vocabulary_id=vocabulary_id,
            limit=limit,
        )
        for block, pallet_id, status, negative_inner_product in self._session.execute(statement):
            similarity = -float(negative_inner_product)
            if similarity > 0:
                per_block[searched[block - 1]].append(
                    StoredNeighbour(pallet_id=pallet_id, pallet_status=status, similarity=similarity)
                )
        return per_block

    def latest_words(
        self, pallet_ids: Sequence[uuid.UUID], *, model_id: str, vocabulary_id: str
    ) -> dict[uuid.UUID, StoredWords]:
        """The visual words of each pallet's newest capture that has words of ``vocabulary_id``.

        One round trip; only the words travel, in pgvector's binary form (``sparsevec_send``: parsing the
        text form costs about as much per block as pairing it).
        """
        if not pallet_ids:
            return {}
        rows = self._session.execute(
            latest_words_query(pallet_ids, model_id=model_id, vocabulary_id=vocabulary_id)
        ).all()
        latest: dict[uuid.UUID, StoredWords] = {}
        for (pallet_id, event_id), blocks in groupby(rows, key=lambda row: (row[0], row[1])):
            by_position = {position: words_from_binary(data) for _, _, position, data in blocks}
            latest[pallet_id] = StoredWords(
                event_id, [by_position.get(position) for position in range(max(by_position) + 1)]
            )
        return latest

    def latest_captures(
        self, pallet_ids: Sequence[uuid.UUID], *, model_id: str, per_pallet: int
    ) -> dict[uuid.UUID, list[StoredCapture]]:
        """The ``per_pallet`` most recent captures (events) of each pallet, newest first.

        Pallets without fingerprints of ``model_id`` are absent. One round trip for all pallets.
        """
        if not pallet_ids:
            return {}
        rows = self._session.execute(
            latest_captures_query(pallet_ids, model_id=model_id, per_pallet=per_pallet)
        ).all()
        captures: dict[uuid.UUID, list[StoredCapture]] = {}
        for (pallet_id, event_id), blocks in groupby(rows, key=lambda row: (row[0], row[1])):
            fingerprints = unit_rows([fingerprint_from_binary(row[2]) for row in blocks])
            captures.setdefault(pallet_id, []).append(StoredCapture(event_id, fingerprints))
        return captures

    def captures_fingerprints(self, event_ids: Collection[int], *, model_id: str) -> dict[int, np.ndarray]:
        """The fingerprints (unit rows, upload order) of several captures in one round trip."""
        if not event_ids:
            return {}
        rows = self._session.execute(
            select(Fingerprint.event_id, func.halfvec_send(Fingerprint.embedding))
            .where(Fingerprint.event_id.in_(event_ids), Fingerprint.model_id == model_id)
            .order_by(Fingerprint.event_id, Fingerprint.position)
        ).all()
        return {
            event_id: unit_rows([fingerprint_from_binary(row[1]) for row in blocks])
            for event_id, blocks in groupby(rows, key=lambda row: row[0])
        }

    def capture_features(self, event_id: int, *, model_id: str, side_scale: bool) -> CaptureFeatures:
        """The local features of one capture's blocks in upload order (``None`` where none were stored),
        with their side-scale features when ``side_scale`` (a query cut out of side views needs them)."""
        return self.captures_features([event_id], model_id=model_id, side_scale=side_scale).get(
            event_id, CaptureFeatures([])
        )

    def captures_features(
        self, event_ids: Collection[int], *, model_id: str, side_scale: bool
    ) -> dict[int, CaptureFeatures]:
        """:meth:`capture_features` of several captures in one round trip; events without rows are absent."""
        if not event_ids:
            return {}
        side_scale_column = Fingerprint.side_scale_features if side_scale else null()
        rows = self._session.execute(
            select(Fingerprint.event_id, Event.from_side_views, Fingerprint.local_features, side_scale_column)
            .join(Event, Event.id == Fingerprint.event_id)
            .where(Fingerprint.event_id.in_(event_ids), Fingerprint.model_id == model_id)
            .order_by(Fingerprint.event_id, Fingerprint.position)
        ).all()
        captures: dict[int, CaptureFeatures] = {}
        for (event_id, from_side_views), blocks in groupby(rows, key=lambda row: (row[0], row[1])):
            stored = [(_features_or_none(row[2]), _features_or_none(row[3])) for row in blocks]
            at_side_scale = [scaled for _, scaled in stored]
            captures[event_id] = CaptureFeatures(
                features=[features for features, _ in stored],
                from_side_views=from_side_views,
                at_side_scale=(
                    at_side_scale
                    if not from_side_views and any(item is not None for item in at_side_scale)
                    else None
                ),
            )
        return captures

    def add_all(self, fingerprints: Sequence[Fingerprint]) -> None:
        self._session.add_all(fingerprints)
        self._session.flush()


def hnsw_index_name(model_id: str) -> str:
    """Name of ``model_id``'s HNSW index: a digest, since model ids (up to 128 characters) are longer than
    PostgreSQL names (63 bytes). Migration 0006 holds a frozen copy of this rule."""
    return HNSW_INDEX_PREFIX + hashlib.sha256(model_id.encode()).hexdigest()[:16]


def hnsw_index_ddl(model_id: str, dim: int, *, concurrently: bool = False) -> str:
    """``CREATE INDEX`` of ``model_id``'s HNSW index: a partial index over its rows only, on the expression
    ``embedding::halfvec(dim)`` (the column itself has no dimension, every model has its own). The k-NN
    statements below filter on the same literal ``model_id`` and order by the same expression."""
    if not 1 <= dim <= MAX_INDEXED_DIM:
        raise ValueError(f"an HNSW index takes 1 to {MAX_INDEXED_DIM} dimensions, not {dim}")
    return (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS {hnsw_index_name(model_id)} "
        f"ON {Fingerprint.__tablename__} USING hnsw ((embedding::halfvec({dim})) halfvec_cosine_ops) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) WHERE model_id = {_quoted(model_id)}"
    )


def words_index_name(model_id: str, vocabulary_id: str) -> str:
    """Name of the HNSW index over the visual words of ``model_id``'s blocks computed with ``vocabulary_id``
    (a digest, like the fingerprints' indexes: both follow the data)."""
    digest = hashlib.sha256(f"{model_id}\n{vocabulary_id}".encode()).hexdigest()[:16]
    return WORDS_INDEX_PREFIX + digest


def words_index_ddl(model_id: str, vocabulary_id: str, size: int, *, concurrently: bool = False) -> str:
    """``CREATE INDEX`` of the visual-word index: partial over the ``block_words`` of ``model_id`` computed
    with ``vocabulary_id``, on ``words::sparsevec(size)`` with inner-product operators (the
    vectors are unit length: the inner product is their cosine). :func:`nearest_words_per_block_query`
    filters on the same literals and orders by the same expression."""
    if size < 1:
        raise ValueError(f"a vocabulary has at least one word, not {size}")
    return (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS "
        f"{words_index_name(model_id, vocabulary_id)} ON {FingerprintWords.__tablename__} USING hnsw "
        f"((words::sparsevec({size})) sparsevec_ip_ops) "
        f"WITH (m = {WORDS_HNSW_M}, ef_construction = {WORDS_HNSW_EF_CONSTRUCTION}) "
        f"WHERE model_id = {_quoted(model_id)} AND vocabulary_id = {_quoted(vocabulary_id)}"
    )


def words_index_valid(connection: Connection | Session, model_id: str, vocabulary_id: str) -> bool | None:
    """:func:`hnsw_index_valid` for the visual-word index of ``model_id`` and ``vocabulary_id``."""
    return _index_valid(connection, words_index_name(model_id, vocabulary_id), FingerprintWords.__tablename__)


def _quoted(value: str) -> str:
    """A SQL string literal (``standard_conforming_strings`` is on since PostgreSQL 9.1)."""
    return "'" + value.replace("'", "''") + "'"


def hnsw_index_valid(connection: Connection | Session, model_id: str) -> bool | None:
    """Whether ``model_id``'s HNSW index is usable: ``None`` without one, ``False`` for one left invalid by
    an interrupted ``CREATE INDEX CONCURRENTLY``."""
    return _index_valid(connection, hnsw_index_name(model_id), Fingerprint.__tablename__)


def _index_valid(connection: Connection | Session, name: str, table: str) -> bool | None:
    valid: bool | None = connection.execute(
        text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :name AND i.indrelid = to_regclass(:table)"
        ),
        {"name": name, "table": table},
    ).scalar_one_or_none()
    return valid


def ensure_hnsw_index(
    engine: Engine, model_id: str, dim: int, *, lock_timeout_s: float | None = None
) -> bool:
    """Build ``model_id``'s HNSW index unless a valid one exists; ``True`` if it was built.

    ``CREATE INDEX CONCURRENTLY``: recordings continue while it is built (it waits for transactions that
    are writing fingerprints to end). An invalid leftover of an interrupted build is dropped first. Runs
    under a session advisory lock, so several processes starting at once build it once. With
    ``lock_timeout_s``, a wait for those transactions longer than that raises ``OperationalError`` (the
    invalid index it leaves is dropped by the next call).
    """
    return _ensure_index(
        engine,
        hnsw_index_name(model_id),
        hnsw_index_ddl(model_id, dim, concurrently=True),
        f"the {dim}-dim fingerprints of {model_id}",
        Fingerprint.__tablename__,
        lock_timeout_s,
    )


def ensure_words_index(
    engine: Engine, model_id: str, vocabulary: VisualVocabulary, *, lock_timeout_s: float | None = None
) -> bool:
    """:func:`ensure_hnsw_index` for the visual words of ``model_id``'s rows computed with ``vocabulary``."""
    return _ensure_index(
        engine,
        words_index_name(model_id, vocabulary.vocabulary_id),
        words_index_ddl(model_id, vocabulary.vocabulary_id, vocabulary.size, concurrently=True),
        f"the visual words ({vocabulary.vocabulary_id}) of {model_id}",
        FingerprintWords.__tablename__,
        lock_timeout_s,
    )


def _ensure_index(
    engine: Engine, name: str, ddl: str, description: str, table: str, lock_timeout_s: float | None
) -> bool:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        timeout = "0" if lock_timeout_s is None else f"{round(lock_timeout_s * 1000)}ms"
        connection.execute(select(func.set_config("lock_timeout", timeout, False)))
        try:
            connection.execute(select(func.pg_advisory_lock(INDEX_BUILD_LOCK_KEY)))
            try:
                return _build_index(connection, name, ddl, description, table)
            finally:
                connection.execute(select(func.pg_advisory_unlock(INDEX_BUILD_LOCK_KEY)))
        finally:  # the connection goes back to the pool
            connection.execute(text("RESET lock_timeout"))


def _build_index(connection: Connection, name: str, ddl: str, description: str, table: str) -> bool:
    valid = _index_valid(connection, name, table)
    if valid:
        return False
    if valid is False:
        logger.warning("dropping the invalid HNSW index %s left by an interrupted build", name)
        connection.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
    logger.info("building HNSW index %s for %s", name, description)
    # sent as it is: the ids in it are data, neither text() nor the driver may read ":x" or "%s" in them
    connection.exec_driver_sql(ddl, execution_options={"no_parameters": True})
    return True


def _of_model(model_id: str) -> ColumnElement[bool]:
    """``model_id = '<literal>'``: a literal, never a bound parameter, so that the planner matches the
    model's partial HNSW index even in the generic plan of a prepared statement."""
    return Fingerprint.model_id == literal(model_id, String, literal_execute=True)


def _embedding_as(dim: int) -> ColumnElement[HalfVector]:
    """The stored embedding as the indexed expression ``embedding::halfvec(dim)``."""
    return cast(Fingerprint.embedding, HALFVEC(dim))


def hnsw_search_settings(ef_search: int) -> dict[str, str]:
    """PostgreSQL settings of the service's HNSW searches (the benchmarks apply the same).

    Custom plans only: psycopg prepares a statement after its fifth execution on a connection, and from
    then on PostgreSQL may switch to the generic plan, which for the visual-word k-NN is a sequential scan
    computing every stored block's inner product (measured: 0.1 s -> 3 s per dispatch at 10 000 pallets).
    """
    return {
        "hnsw.ef_search": str(ef_search),
        "hnsw.iterative_scan": "relaxed_order",
        "plan_cache_mode": "force_custom_plan",
    }


def nearest_fingerprints_query(
    embedding: np.ndarray, *, model_id: str, limit: int
) -> Select[int, uuid.UUID, float]:
    """The k-NN step: fingerprints of ``model_id`` by cosine distance through its HNSW index, limited.

    Shared with the benchmarks, which measure this very statement's recall and cost.
    """
    distance = _embedding_as(embedding.shape[-1]).cosine_distance(embedding)
    return (
        select(Fingerprint.id, Fingerprint.pallet_id, distance.label("distance"))
        .where(_of_model(model_id))
        .order_by(distance)
        .limit(limit)
    )


def nearest_query(embedding: np.ndarray, *, model_id: str, limit: int) -> Select[uuid.UUID, str, float]:
    """k-NN through the HNSW index (ordered by cosine distance, limited), joined to the pallets' status."""
    nearest = nearest_fingerprints_query(embedding, model_id=model_id, limit=limit).subquery()
    return select(nearest.c.pallet_id, Pallet.status, nearest.c.distance).join(
        Pallet, Pallet.id == nearest.c.pallet_id
    )


def nearest_per_block_query(
    embeddings: np.ndarray, *, model_id: str, limit: int
) -> Select[int, uuid.UUID, str, float]:
    """The k-NN of every query block in one statement: block (1-based), pallet, its status, distance.

    ``unnest(queries) WITH ORDINALITY`` numbers the blocks; a ``LATERAL`` subquery runs
    :func:`nearest_fingerprints_query`'s search for each one (an HNSW index scan per block, ordered by the
    distance to that block, limited), so a dispatch costs one round trip instead of one per block.
    """
    dim = embeddings.shape[-1]
    vectors = bindparam(
        "query_blocks",
        [HalfVector(row) for row in np.asarray(embeddings, dtype=np.float32)],
        type_=ARRAY(HALFVEC(dim)),
    )
    blocks = (
        func.unnest(cast(vectors, ARRAY(HALFVEC(dim))))
        .table_valued("embedding", with_ordinality="block")
        .render_derived(name="query_blocks")
    )
    distance = _embedding_as(dim).cosine_distance(blocks.c.embedding)
    return _nearest_per_query_block(blocks, distance, _of_model(model_id), limit)


def _nearest_per_query_block(
    blocks: TableValuedAlias, distance: ColumnElement[float], rows: ColumnElement[bool], limit: int
) -> Select[int, uuid.UUID, str, float]:
    """For each row of ``blocks`` (numbered ``block``), the ``limit`` fingerprints among ``rows`` of
    smallest ``distance`` to it: a ``LATERAL`` index scan per block, joined to the pallets' status."""
    nearest = (
        select(Fingerprint.pallet_id, distance.label("distance"))
        .where(rows)
        .order_by(distance)
        .limit(limit)
        .lateral("nearest")
    )
    return (
        select(blocks.c.block, nearest.c.pallet_id, Pallet.status, nearest.c.distance)
        .select_from(blocks)
        .join(nearest, true())
        .join(Pallet, Pallet.id == nearest.c.pallet_id)
        .order_by(blocks.c.block, nearest.c.distance)
    )


def latest_captures_query(
    pallet_ids: Sequence[uuid.UUID], *, model_id: str, per_pallet: int
) -> Select[uuid.UUID, int, bytes]:
    """Fingerprints of the newest ``per_pallet`` events of each pallet, by pallet, event and position, in
    pgvector's binary form (:func:`fingerprint_from_binary`).

    Reads through ``ix_fingerprints_pallet_id``: a handful of pallets, never a scan of the table.
    """
    ranked = (
        select(
            Fingerprint.pallet_id,
            Fingerprint.event_id,
            Fingerprint.position,
            Fingerprint.embedding,
            func.dense_rank()
            .over(partition_by=Fingerprint.pallet_id, order_by=Fingerprint.event_id.desc())
            .label("recency"),
        )
        .where(Fingerprint.pallet_id.in_(pallet_ids), Fingerprint.model_id == model_id)
        .subquery()
    )
    return (
        select(ranked.c.pallet_id, ranked.c.event_id, func.halfvec_send(ranked.c.embedding))
        .where(ranked.c.recency <= per_pallet)
        .order_by(ranked.c.pallet_id, ranked.c.event_id.desc(), ranked.c.position)
    )


def as_sparsevec(words: SparseWords) -> SparseVector:
    """``words`` as pgvector's ``sparsevec`` value."""
    return SparseVector(
        dict(zip(words.indices.tolist(), words.values.tolist(), strict=True)), words.dimensions
    )


def _features_or_none(data: bytes | None) -> LocalFeatures | None:
    return None if data is None else LocalFeatures.from_bytes(data)


def fingerprint_from_binary(data: bytes) -> np.ndarray:
    """A ``halfvec`` in pgvector's binary form (``halfvec_send``): big-endian int16 dimensions and an unused
    int16, then the float16 values. Read as float64; about 70x faster than parsing the text form, which cost
    ~0.1 ms per fingerprint and ~30 ms per dispatch (its shortlisted pallets' captures)."""
    dimensions = int(np.frombuffer(data, dtype=">i2", count=1)[0])
    return np.frombuffer(data, dtype=">f2", count=dimensions, offset=4).astype(np.float64)


def words_from_binary(data: bytes) -> SparseWords:
    """A ``sparsevec`` in pgvector's binary form (``sparsevec_send``): big-endian int32 dimensions,
    non-zeros and a zero, then the 0-based indices (int32) and the values (float4)."""
    dimensions, nonzeros, _ = np.frombuffer(data, dtype=">i4", count=3)
    indices = np.frombuffer(data, dtype=">i4", count=nonzeros, offset=12)
    values = np.frombuffer(data, dtype=">f4", count=nonzeros, offset=12 + 4 * int(nonzeros))
    return SparseWords(
        indices=indices.astype(np.int32), values=values.astype(np.float32), dimensions=int(dimensions)
    )


def _of_vocabulary(model_id: str, vocabulary_id: str) -> ColumnElement[bool]:
    """Words of ``model_id``'s blocks computed with ``vocabulary_id``, as literals (the words index's
    predicate; see :func:`_of_model`)."""
    return and_(
        FingerprintWords.model_id == literal(model_id, String, literal_execute=True),
        FingerprintWords.vocabulary_id == literal(vocabulary_id, String, literal_execute=True),
    )


def nearest_words_per_block_query(
    words: Sequence[SparseWords], *, model_id: str, vocabulary_id: str, limit: int
) -> Select[int, uuid.UUID, str, float]:
    """The visual-word k-NN of every query block in one statement: block (1-based), pallet, its status, and
    the negative inner product (pgvector's ``<#>``; the vectors are unit length, so minus the cosine).

    Built like :func:`nearest_per_block_query`: a ``LATERAL`` index scan per block over the words' partial
    HNSW index (``words::sparsevec(<size>)``, blocks of ``model_id`` and ``vocabulary_id``), the blocks found
    joined to their fingerprints' pallets.
    """
    if not words:
        raise ValueError("no query blocks")
    size = words[0].dimensions
    if any(block.dimensions != size for block in words):
        raise ValueError("query blocks of one statement come from one vocabulary")
    vectors = bindparam("query_words", [as_sparsevec(block) for block in words], type_=ARRAY(SPARSEVEC(size)))
    blocks = (
        func.unnest(cast(vectors, ARRAY(SPARSEVEC(size))))
        .table_valued("words", with_ordinality="block")
        .render_derived(name="query_blocks")
    )
    distance = cast(FingerprintWords.words, SPARSEVEC(size)).max_inner_product(blocks.c.words)
    nearest = (
        select(FingerprintWords.fingerprint_id, distance.label("distance"))
        .where(_of_vocabulary(model_id, vocabulary_id))
        .order_by(distance)
        .limit(limit)
        .lateral("nearest")
    )
    return (
        select(blocks.c.block, Fingerprint.pallet_id, Pallet.status, nearest.c.distance)
        .select_from(blocks)
        .join(nearest, true())
        .join(Fingerprint, Fingerprint.id == nearest.c.fingerprint_id)
        .join(Pallet, Pallet.id == Fingerprint.pallet_id)
        .order_by(blocks.c.block, nearest.c.distance)
    )


def latest_words_query(
    pallet_ids: Sequence[uuid.UUID], *, model_id: str, vocabulary_id: str
) -> Select[uuid.UUID, int, int, bytes]:
    """The words (binary) of each pallet's newest event with words of ``vocabulary_id``, by pallet, position.

    Reads through ``ix_fingerprints_pallet_id``, like :func:`latest_captures_query`.
    """
    ranked = (
        select(
            Fingerprint.pallet_id,
            Fingerprint.event_id,
            Fingerprint.position,
            func.sparsevec_send(FingerprintWords.words, type_=LargeBinary).label("words"),
            func.dense_rank()
            .over(partition_by=Fingerprint.pallet_id, order_by=Fingerprint.event_id.desc())
            .label("recency"),
        )
        .join(FingerprintWords, FingerprintWords.fingerprint_id == Fingerprint.id)
        .where(
            Fingerprint.pallet_id.in_(pallet_ids),
            Fingerprint.model_id == model_id,
            FingerprintWords.vocabulary_id == vocabulary_id,
        )
        .subquery()
    )
    return (
        select(ranked.c.pallet_id, ranked.c.event_id, ranked.c.position, ranked.c.words)
        .where(ranked.c.recency == 1)
        .order_by(ranked.c.pallet_id, ranked.c.position)
    )
