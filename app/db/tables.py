"""ORM tables. The schema itself is created only by the Alembic migrations in ``migrations/``."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np
from pgvector.sqlalchemy import HALFVEC
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base

EMBEDDING_DIM = 512
"""Size of a stored block fingerprint; the model's ``embedding_dim`` must equal it (checked by /readyz)."""

HNSW_INDEX_NAME = "ix_fingerprints_embedding_hnsw"


class PalletStatus(StrEnum):
    IN_STOCK = "in_stock"
    DISPATCHED = "dispatched"


class EventKind(StrEnum):
    RECEIPT = "receipt"
    DISPATCH = "dispatch"


class MatchDecision(StrEnum):
    MATCHED = "matched"
    REGISTERED = "registered"


def _check_in(column: str, enum: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(member.value) for member in enum)})"


class Pallet(Base):
    """A physical pallet, identified by the fingerprints of its blocks."""

    __tablename__ = "pallets"
    __table_args__ = (
        CheckConstraint(_check_in("status", PalletStatus), name="status"),
        Index("ix_pallets_first_seen_id", "first_seen", "id"),
        Index("ix_pallets_last_seen", "last_seen"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Event(Base):
    """One receipt or dispatch of a pallet, with the match result returned to the client."""

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint(_check_in("kind", EventKind), name="kind"),
        CheckConstraint(_check_in("decision", MatchDecision), name="decision"),
        Index("ix_events_pallet_id_id", "pallet_id", "id"),
        Index("ix_events_recorded_at", "recorded_at"),
        Index("ix_events_external_ref", "external_ref"),
        Index("ix_events_site", "site"),
        Index("ix_events_review", "id", postgresql_where=text("review")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    pallet_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("pallets.id", ondelete="RESTRICT"))
    kind: Mapped[str] = mapped_column(String(16))
    decision: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Double)
    votes: Mapped[int] = mapped_column(Integer)
    blocks_compared: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(128))
    site: Mapped[str | None] = mapped_column(String(200))
    gate: Mapped[str | None] = mapped_column(String(200))
    external_ref: Mapped[str | None] = mapped_column(String(200))
    captured_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    result: Mapped[dict[str, Any]] = mapped_column(JSONB)
    review: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    """Registered as new but uncertain: a person should check the candidates (see the decision bands)."""
    inliers: Mapped[int | None] = mapped_column(Integer)
    """Geometric evidence of the strongest checked candidate (summed inliers), null if none was checked."""
    runner_up_inliers: Mapped[int | None] = mapped_column(Integer)
    """Evidence of the second checked candidate: an impostor sample for the live calibration."""


class Fingerprint(Base):
    """The embedding of one block capture, tied to the model that produced it."""

    __tablename__ = "fingerprints"
    __table_args__ = (
        Index("ix_fingerprints_pallet_id", "pallet_id"),
        Index("ix_fingerprints_event_id", "event_id"),
        Index(
            HNSW_INDEX_NAME,
            "embedding",
            postgresql_using="hnsw",
            postgresql_with={"m": 16, "ef_construction": 64},
            postgresql_ops={"embedding": "halfvec_cosine_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    pallet_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("pallets.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(SmallInteger)
    embedding: Mapped[np.ndarray] = mapped_column(HALFVEC(EMBEDDING_DIM))
    local_features: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    """Local features of the block (``LocalFeatures.to_bytes``); null if recorded before revision 0002."""


class IdempotencyKey(Base):
    """Remembers which event a client's ``Idempotency-Key`` produced, so a retry returns the same result."""

    __tablename__ = "idempotency_keys"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
