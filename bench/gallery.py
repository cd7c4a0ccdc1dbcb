"""Large galleries in the service's own tables, seeded by bulk COPY instead of through the HTTP API.

Plausible fingerprints: the real fingerprints of a few hundred synthetic block captures (embedded by the
model under test) are the *bases*. A gallery fingerprint takes, for each of its ``p`` parts independently, the
part of a random base (rescaled to unit norm), adds isotropic gaussian noise of norm ~``noise``, renormalises
the part and scales the joined vector by ``1/sqrt(p)``, exactly as ``models.runtime.pcb.parts_to_fingerprint``
does.
Mixing parts of different bases gives far more distinct fingerprints than bases while keeping the similarity
statistics of real parts (the expected cosine of a perturbed part to its base is ``1/sqrt(1 + noise**2)``).

Visual words, when the checkpoint carries a vocabulary, are stored as the service stores them (migration
0007): the real pallets' words are the vocabulary's encoding of their stored local features (what
``ModelRunner.analyse`` computes); a synthetic pallet has no images, so each of its blocks gets plausible
words mixed from the real blocks' (:func:`perturbed_words`), and the word index has as many rows as the
service's would.

Each seeded pallet gets a ``registered`` receipt event and six fingerprints, like a real receipt (a real
pallet's with the side-scale features the service stores for block images, when given). The HNSW
indexes (fingerprints, and visual words) are dropped before loading and rebuilt afterwards (far faster than
maintaining them row by row), and the rows that benchmark dispatches add are deleted before the gallery grows
again, so every measurement sees only the seeded gallery (whose float16 copy here is the ground truth of
exact search).

Seeding writes the service's tables with COPY rather than through its repositories, which insert row by row
and would take hours for the largest galleries; the index definition comes from the service's repository
(``hnsw_index_ddl``), the schema from the service's migrations, and the quick benchmark test runs this
seeding against that schema.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector, SparseVector
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb
from sqlalchemy.engine import make_url
from tqdm import tqdm

from app.db.tables import EventKind, MatchDecision, PalletStatus
from app.matching.repository import (
    HNSW_M,
    WORDS_HNSW_M,
    as_sparsevec,
    hnsw_index_ddl,
    hnsw_index_name,
    words_index_ddl,
    words_index_name,
)
from models.runtime.local_features import LocalFeatures
from models.runtime.visual_words import SparseWords, VisualVocabulary
from models.synth import BLOCKS_PER_PALLET

logger = logging.getLogger(__name__)

COPY_CHUNK_PALLETS = 5_000


def libpq_url(database_url: str) -> str:
    """The SQLAlchemy URL as a libpq connection string (``postgresql://``) for psycopg."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def perturbed_fingerprints(
    bases: np.ndarray, count: int, *, num_parts: int, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """``count`` unit fingerprints mixed part-wise from ``bases`` with gaussian noise (module docstring)."""
    dim = bases.shape[1]
    part_dim = dim // num_parts
    unit_parts = bases.reshape(len(bases), num_parts, part_dim) * math.sqrt(num_parts)
    chosen = rng.integers(0, len(bases), size=(count, num_parts))
    parts = unit_parts[chosen, np.arange(num_parts)[None, :]]
    parts = parts + rng.standard_normal(parts.shape, dtype=np.float32) * (noise / math.sqrt(part_dim))
    parts /= np.linalg.norm(parts, axis=2, keepdims=True)
    return (parts.reshape(count, dim) / math.sqrt(num_parts)).astype(np.float32)


WORDS_KEPT = 0.5
"""Share of a real block's words a synthetic block keeps (the rest are drawn from all real blocks' words)."""


def perturbed_words(
    pool: Sequence[SparseWords], count: int, *, rng: np.random.Generator, kept: float = WORDS_KEPT
) -> list[SparseWords]:
    """``count`` unit word vectors, each a real block's (from ``pool``) with about ``1 - kept`` of its words
    replaced by words drawn from every real block's words (so common words stay common), their weights kept.

    They keep the real blocks' number of words, weights and word frequencies, and any two share words about
    as often as blocks of different real pallets do, except with the block they were mixed from (as a
    synthetic fingerprint stays near its base).
    """
    blocks = [block for block in pool if len(block)]
    if not blocks:
        raise ValueError("no real block with words to mix synthetic words from")
    dimensions = blocks[0].dimensions
    occurrences = np.concatenate([block.indices for block in blocks])
    chosen = rng.integers(0, len(blocks), size=count)
    mixed = []
    for index in chosen:
        base = blocks[index]
        replaced = rng.random(len(base)) >= kept
        indices = base.indices.copy()
        indices[replaced] = rng.choice(occurrences, size=int(replaced.sum()))
        # a drawn word that the block already has adds its weight to that word's
        unique, inverse = np.unique(indices, return_inverse=True)
        values = np.zeros(len(unique), np.float64)
        np.add.at(values, inverse, base.values)
        mixed.append(
            SparseWords(
                indices=unique.astype(np.int32),
                values=(values / np.linalg.norm(values)).astype(np.float32),
                dimensions=dimensions,
            )
        )
    return mixed


@dataclass(frozen=True)
class GalleryStats:
    pallets: int
    fingerprints: int
    copy_s: float
    index_build_s: float
    heap_bytes: int
    hnsw_index_bytes: int
    fingerprints_total_bytes: int
    database_bytes: int
    words_index_build_s: float | None = None
    """Build time of the visual words' HNSW index (``None``: the gallery has no words)."""
    words_index_bytes: int | None = None
    words_bytes: int | None = None
    """Stored size of the ``block_words.words`` column (TOAST included)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Gallery:
    """The seeded gallery: real pallets first (their enrol fingerprints), then plausible synthetic pallets."""

    def __init__(
        self,
        database_url: str,
        *,
        model_id: str,
        num_parts: int,
        real_fingerprints: np.ndarray,
        real_features: Sequence[Sequence[LocalFeatures]],
        noise: float,
        seed: int,
        vocabulary: VisualVocabulary | None = None,
        real_side_scale_features: Sequence[Sequence[LocalFeatures]] = (),
    ) -> None:
        if real_fingerprints.ndim != 3 or real_fingerprints.shape[1] != BLOCKS_PER_PALLET:
            raise ValueError("real fingerprints must be (pallets, 6, dims)")
        if [len(blocks) for blocks in real_features] != [BLOCKS_PER_PALLET] * len(real_fingerprints):
            raise ValueError("real features must hold 6 blocks for every real pallet")
        if real_side_scale_features and [len(blocks) for blocks in real_side_scale_features] != [
            BLOCKS_PER_PALLET
        ] * len(real_fingerprints):
            raise ValueError("real side-scale features must hold 6 blocks for every real pallet (or none)")
        self._conninfo = libpq_url(database_url)
        self.model_id = model_id
        self.num_parts = num_parts
        self.noise = noise
        self.dim = int(real_fingerprints.shape[2])
        self.bases = real_fingerprints.reshape(-1, self.dim)
        self._real = real_fingerprints
        self._real_features = [[features.to_bytes() for features in blocks] for blocks in real_features]
        """Stored local features of the real pallets; synthetic pallets have none (they have no images)."""
        self._real_side_scale = [
            [features.to_bytes() for features in blocks] for blocks in real_side_scale_features
        ]
        """Their features at a side-view block's scale, as the service stores them for block images."""
        self.vocabulary = vocabulary
        """Words are stored (and indexed) only with a vocabulary, as the service does."""
        self._real_words = (
            [[vocabulary.encode(features) for features in blocks] for blocks in real_features]
            if vocabulary is not None
            else []
        )
        self.words_index_name = (
            words_index_name(model_id, vocabulary.vocabulary_id) if vocabulary is not None else None
        )
        self._rng = np.random.default_rng(seed)
        self._words_rng = np.random.default_rng([seed, 1])
        """Its own stream: a gallery with words has the same fingerprints and pallets as one without."""
        self.vectors = np.empty((0, self.dim), dtype=np.float16)
        """Every seeded fingerprint, as stored (halfvec); row ``i`` has database id ``i + 1``."""
        self.pallet_ids: list[uuid.UUID] = []
        """Seeded pallets in order; the first ``len(real_fingerprints)`` are the real pallets."""
        self.index_name = hnsw_index_name(model_id)
        """The service's HNSW index of ``model_id``'s fingerprints."""

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        connection = psycopg.connect(self._conninfo, autocommit=autocommit)
        register_vector(connection)
        return connection

    @property
    def pallets(self) -> int:
        return len(self.pallet_ids)

    def real_pallet_ids(self) -> list[uuid.UUID]:
        return self.pallet_ids[: len(self._real)]

    def grow_to(self, pallets: int) -> GalleryStats:
        """Add pallets until the gallery holds ``pallets``, rebuild the HNSW index and report sizes."""
        if pallets < max(self.pallets, len(self._real)):
            raise ValueError(f"cannot grow a gallery of {self.pallets} pallets to {pallets}")
        with self.connect(autocommit=True) as connection:
            connection.execute(f"DROP INDEX IF EXISTS {self.index_name}")
            if self.words_index_name is not None:
                connection.execute(f"DROP INDEX IF EXISTS {self.words_index_name}")
            self._forget_requests(connection)
        started = time.perf_counter()
        with self.connect() as connection:
            chunks = [self.vectors]
            seeded_rows = len(self.vectors)
            with tqdm(total=pallets - self.pallets, desc=f"seed {pallets} pallets", unit="pallet") as bar:
                while self.pallets < pallets:
                    count = min(COPY_CHUNK_PALLETS, pallets - self.pallets)
                    vectors, pallet_ids = self._copy_chunk(
                        connection, count, first_fingerprint=seeded_rows + 1
                    )
                    chunks.append(vectors)
                    seeded_rows += len(vectors)
                    self.pallet_ids.extend(pallet_ids)
                    bar.update(count)
            self.vectors = np.concatenate(chunks)
            for table in ("events", "fingerprints"):
                connection.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
                )
            connection.commit()
        copy_s = time.perf_counter() - started
        index_build_s = self.build_index()
        words_index_build_s = self.build_words_index()
        with self.connect(autocommit=True) as connection:
            connection.execute("VACUUM ANALYZE pallets, events, fingerprints, block_words")
            sizes = connection.execute(
                "SELECT pg_relation_size('fingerprints'), pg_relation_size(%s), "
                "pg_total_relation_size('fingerprints'), pg_database_size(current_database()), "
                "pg_relation_size(%s), (SELECT sum(pg_column_size(words)) FROM block_words)",
                (self.index_name, self.words_index_name or self.index_name),
            ).fetchone()
        assert sizes is not None
        with_words = self.words_index_name is not None
        stats = GalleryStats(
            pallets=self.pallets,
            fingerprints=len(self.vectors),
            copy_s=round(copy_s, 2),
            index_build_s=round(index_build_s, 2),
            heap_bytes=sizes[0],
            hnsw_index_bytes=sizes[1],
            fingerprints_total_bytes=sizes[2],
            database_bytes=sizes[3],
            words_index_build_s=round(words_index_build_s, 2) if words_index_build_s is not None else None,
            words_index_bytes=sizes[4] if with_words else None,
            words_bytes=int(sizes[5] or 0) if with_words else None,
        )
        logger.info("gallery: %s", stats)
        return stats

    def build_index(self) -> float:
        """(Re)create the service's HNSW index with enough maintenance memory for its graph; seconds taken."""
        rows = len(self.vectors)
        memory_mb = max(64, math.ceil(rows * 2 * (self.dim * 2 + HNSW_M * 2 * 8) / 2**20))
        with self.connect(autocommit=True) as connection:
            connection.execute(f"SET maintenance_work_mem = '{memory_mb}MB'")
            logger.info("building the HNSW index over %d fingerprints", rows)
            started = time.perf_counter()
            connection.execute(hnsw_index_ddl(self.model_id, self.dim))
            return time.perf_counter() - started

    def build_words_index(self) -> float | None:
        """(Re)create the service's index of the visual words; seconds taken (``None`` without words)."""
        if self.vocabulary is None:
            return None
        rows = len(self.vectors)
        # a graph node holds its sparse vector (about 500 words of 8 bytes) and 2 m neighbours
        memory_mb = max(64, math.ceil(rows * 2 * (500 * 8 + WORDS_HNSW_M * 2 * 8) / 2**20))
        with self.connect(autocommit=True) as connection:
            connection.execute(f"SET maintenance_work_mem = '{memory_mb}MB'")
            logger.info("building the visual-word HNSW index over %d blocks", rows)
            started = time.perf_counter()
            connection.execute(
                words_index_ddl(self.model_id, self.vocabulary.vocabulary_id, self.vocabulary.size)
            )
            return time.perf_counter() - started

    def _forget_requests(self, connection: psycopg.Connection[Any]) -> None:
        """Delete what benchmark dispatches wrote after seeding and put every pallet back in stock."""
        seeded_events = self.pallets
        connection.execute("DELETE FROM fingerprints WHERE id > %s", (len(self.vectors),))
        connection.execute("DELETE FROM idempotency_keys WHERE event_id > %s", (seeded_events,))
        connection.execute("DELETE FROM events WHERE id > %s", (seeded_events,))
        connection.execute(
            "DELETE FROM pallets p WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.pallet_id = p.id)"
        )
        connection.execute("UPDATE pallets SET status = %s WHERE status <> %s", (PalletStatus.IN_STOCK,) * 2)

    def _copy_chunk(
        self, connection: psycopg.Connection[Any], count: int, *, first_fingerprint: int
    ) -> tuple[np.ndarray, list[uuid.UUID]]:
        """COPY ``count`` more pallets with one receipt event and six fingerprints each."""
        real_left = max(0, len(self._real) - self.pallets)
        from_real = self._real[self.pallets : self.pallets + min(count, real_left)].reshape(-1, self.dim)
        synthetic = perturbed_fingerprints(
            self.bases,
            (count - len(from_real) // BLOCKS_PER_PALLET) * BLOCKS_PER_PALLET,
            num_parts=self.num_parts,
            noise=self.noise,
            rng=self._rng,
        )
        vectors = np.concatenate([from_real, synthetic]).astype(np.float16)
        words = self._chunk_words(count, len(from_real) // BLOCKS_PER_PALLET)
        pallet_ids = [uuid.UUID(bytes=self._rng.bytes(16), version=4) for _ in range(count)]
        first_event = self.pallets + 1
        now = datetime.now(UTC)
        with connection.cursor() as cursor:
            with cursor.copy(
                "COPY pallets (id, status, first_seen, last_seen) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["uuid", "varchar", "timestamptz", "timestamptz"])
                for pallet_id in pallet_ids:
                    copy.write_row((pallet_id, PalletStatus.IN_STOCK.value, now, now))
            with cursor.copy(
                "COPY events (id, pallet_id, kind, decision, votes, blocks_compared, model_id, recorded_at, "
                "result) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(
                    ["int8", "uuid", "varchar", "varchar", "int4", "int4", "varchar", "timestamptz", "jsonb"]
                )
                for offset, pallet_id in enumerate(pallet_ids):
                    copy.write_row(
                        (
                            first_event + offset,
                            pallet_id,
                            EventKind.RECEIPT.value,
                            MatchDecision.REGISTERED.value,
                            0,
                            0,
                            self.model_id,
                            now,
                            Jsonb({}),
                        )
                    )
            with cursor.copy(
                "COPY fingerprints (id, pallet_id, event_id, model_id, position, embedding, local_features, "
                "side_scale_features) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "uuid", "int8", "varchar", "int2", "halfvec", "bytea", "bytea"])
                for row, vector in enumerate(vectors):
                    pallet = row // BLOCKS_PER_PALLET
                    seeded = self.pallets + pallet
                    copy.write_row(
                        (
                            first_fingerprint + row,
                            pallet_ids[pallet],
                            first_event + pallet,
                            self.model_id,
                            row % BLOCKS_PER_PALLET,
                            HalfVector(vector),
                            self._real_features[seeded][row % BLOCKS_PER_PALLET]
                            if seeded < len(self._real_features)
                            else None,
                            self._real_side_scale[seeded][row % BLOCKS_PER_PALLET]
                            if seeded < len(self._real_side_scale)
                            else None,
                        )
                    )
            if words is not None and self.vocabulary is not None:
                with cursor.copy(
                    "COPY block_words (fingerprint_id, model_id, vocabulary_id, words) "
                    "FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["int8", "varchar", "varchar", "sparsevec"])
                    for row, block in enumerate(words):
                        copy.write_row(
                            (first_fingerprint + row, self.model_id, self.vocabulary.vocabulary_id, block)
                        )
        return vectors, pallet_ids

    def _chunk_words(self, count: int, real: int) -> list[SparseVector] | None:
        """The words of the next ``count`` pallets' blocks, of which the first ``real`` are real pallets."""
        if self.vocabulary is None:
            return None
        first = self.pallets
        real_blocks = [block for blocks in self._real_words[first : first + real] for block in blocks]
        synthetic = perturbed_words(
            [block for blocks in self._real_words for block in blocks],
            (count - real) * BLOCKS_PER_PALLET,
            rng=self._words_rng,
        )
        return [as_sparsevec(block) for block in (*real_blocks, *synthetic)]
