"""Fingerprint storage and nearest-neighbour search in pgvector; the only place that selects fingerprints."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from app.db.tables import Fingerprint, Pallet

IDENTIFICATION_LOCK_KEY = zlib.crc32(b"palletreid:identification")
"""Key of the transaction-level advisory lock that serialises identification + registration."""


@dataclass(frozen=True, slots=True)
class StoredNeighbour:
    """A stored block fingerprint near a query block, with its pallet's current status."""

    pallet_id: uuid.UUID
    pallet_status: str
    similarity: float


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
        self._session.execute(select(func.set_config("hnsw.ef_search", str(ef_search), True)))
        self._session.execute(select(func.set_config("hnsw.iterative_scan", "relaxed_order", True)))

    def nearest(self, embedding: np.ndarray, *, model_id: str, limit: int) -> list[StoredNeighbour]:
        """The ``limit`` stored fingerprints of ``model_id`` closest (cosine) to ``embedding``."""
        rows = self._session.execute(nearest_query(embedding, model_id=model_id, limit=limit)).all()
        return [
            StoredNeighbour(pallet_id=pallet_id, pallet_status=status, similarity=1.0 - float(distance))
            for pallet_id, status, distance in rows
        ]

    def add_all(self, fingerprints: Sequence[Fingerprint]) -> None:
        self._session.add_all(fingerprints)
        self._session.flush()


def nearest_query(embedding: np.ndarray, *, model_id: str, limit: int) -> Select[uuid.UUID, str, float]:
    """k-NN through the HNSW index (ordered by cosine distance, limited), joined to the pallets' status."""
    distance = Fingerprint.embedding.cosine_distance(embedding)
    nearest = (
        select(Fingerprint.pallet_id, distance.label("distance"))
        .where(Fingerprint.model_id == model_id)
        .order_by(distance)
        .limit(limit)
        .subquery()
    )
    return select(nearest.c.pallet_id, Pallet.status, nearest.c.distance).join(
        Pallet, Pallet.id == nearest.c.pallet_id
    )
