"""ORM tables. The schema itself is created only by the Alembic migrations in ``migrations/``."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np
from pgvector import SparseVector
from pgvector.sqlalchemy import HALFVEC, SPARSEVEC
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
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class PalletStatus(StrEnum):
    IN_STOCK = "in_stock"
    DISPATCHED = "dispatched"
    MERGED = "merged"
    """Merged into another pallet (``merged_into``) by an operator; its history moved there."""


class EventKind(StrEnum):
    RECEIPT = "receipt"
    DISPATCH = "dispatch"
    MERGE = "merge"
    """An operator merged ``related_pallet_id`` into this pallet."""
    DETACH = "detach"
    """An operator moved event ``related_event_id`` between this pallet and ``related_pallet_id``."""


RECORDING_KINDS = (EventKind.RECEIPT, EventKind.DISPATCH)
"""Events of a camera station (with a decision, a model and fingerprints); the others are corrections."""


class QualityClass(StrEnum):
    """Sorting grade of a pallet (EPAL exchange practice): new, A/B/C used grades, unsorted, defective."""

    NEW = "new"
    A = "A"
    B = "B"
    C = "C"
    UNSORTED = "unsorted"
    DEFECTIVE = "defective"


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
        CheckConstraint(_check_in("quality_class", QualityClass), name="quality_class"),
        CheckConstraint("(status = 'merged') = (merged_into IS NOT NULL)", name="merged_into"),
        Index("ix_pallets_first_seen_id", "first_seen", "id"),
        Index("ix_pallets_last_seen", "last_seen"),
        Index("ix_pallets_merged_into", "merged_into"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    quality_class: Mapped[str | None] = mapped_column(String(16))
    """The quality class most recently reported for it (a receipt or dispatch with ``quality_class``)."""
    merged_into: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("pallets.id", ondelete="RESTRICT"))
    """The surviving pallet once an operator merged this one into it (always a pallet that is not merged)."""


class Event(Base):
    """One receipt or dispatch of a pallet, with the match result returned to the client."""

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint(_check_in("kind", EventKind), name="kind"),
        CheckConstraint(_check_in("decision", MatchDecision), name="decision"),
        CheckConstraint(
            "(kind IN ('receipt', 'dispatch')) = (decision IS NOT NULL AND model_id IS NOT NULL)",
            name="recording_decision",
        ),
        Index("ix_events_pallet_id_id", "pallet_id", "id"),
        Index("ix_events_recorded_at", "recorded_at"),
        Index("ix_events_external_ref", "external_ref"),
        Index("ix_events_site", "site"),
        Index("ix_events_review", "id", postgresql_where=text("review")),
        CheckConstraint(_check_in("quality_class", QualityClass), name="quality_class"),
        CheckConstraint("sscc ~ '^[0-9]{18}$'", name="sscc"),
        Index("ix_events_sscc", "sscc"),
        Index("ix_events_grai", "grai"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    pallet_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("pallets.id", ondelete="RESTRICT"))
    kind: Mapped[str] = mapped_column(String(16))
    decision: Mapped[str | None] = mapped_column(String(16))
    """Null for corrections (merge, detach)."""
    score: Mapped[float | None] = mapped_column(Double)
    votes: Mapped[int] = mapped_column(Integer)
    blocks_compared: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str | None] = mapped_column(String(128))
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
    from_side_views: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    """Its blocks were cut out of side views (else uploaded as block images): which local features of a
    stored capture a query's are matched with (``models.runtime.voting.CaptureFeatures``)."""
    related_pallet_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("pallets.id", ondelete="RESTRICT"))
    """Corrections: the other pallet (merged into this one, or the other side of a detach)."""
    related_event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id", ondelete="RESTRICT"))
    """Detach: the event that moved."""
    actor: Mapped[str | None] = mapped_column(String(64))
    """Corrections: the API key name of the operator."""
    # Business facts a station reports with a receipt or dispatch (all optional; see docs/api.md).
    quality_class: Mapped[str | None] = mapped_column(String(16))
    damaged: Mapped[bool | None] = mapped_column(Boolean)
    damage_codes: Mapped[list[str] | None] = mapped_column(ARRAY(String(32)))
    sscc: Mapped[str | None] = mapped_column(String(18))
    """The SSCC of the load on the pallet (check digit verified)."""
    carrier: Mapped[str | None] = mapped_column(String(200))
    grai: Mapped[str | None] = mapped_column(String(30))
    """The pallet's own GS1 GRAI with serial, read from its label (check digit verified)."""
    asset_code: Mapped[str | None] = mapped_column(String(200))
    """Any other code read from the pallet (e.g. the content of its EPAL QR code)."""


class Fingerprint(Base):
    """The embedding of one block capture, tied to the model that produced it.

    ``embedding`` has no fixed dimension: each model stores its own size. Each model's rows have their own
    partial HNSW index over ``embedding::halfvec(<its dimension>)``, built for the model in service at start
    and by ``palletreid reindex`` (``app.matching.repository.ensure_hnsw_index``); they are not declared
    here because they follow the data, not the schema. Rows are only ever inserted: a block's visual words,
    written after its recording, live in :class:`FingerprintWords`, so that no update gives the fingerprint a
    second entry in its HNSW index.
    """

    __tablename__ = "fingerprints"
    __table_args__ = (
        Index("ix_fingerprints_pallet_id", "pallet_id"),
        Index("ix_fingerprints_event_id", "event_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    pallet_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("pallets.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(SmallInteger)
    embedding: Mapped[np.ndarray] = mapped_column(HALFVEC())
    local_features: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    """Local features of the block (``LocalFeatures.to_bytes``); null if recorded before revision 0002."""
    side_scale_features: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    """Block images only: their local features at a side-view block's scale
    (``models.runtime.voting.side_scale_features``), matched against blocks cut out of side views; null for
    side-view blocks, when the model's geometry turns it off, and before revision 0009 (``palletreid
    reindex`` fills it)."""


class FingerprintWords(Base):
    """The visual-word vector of one stored block (``VisualVocabulary.encode`` of its local features).

    Written by the word indexer after the block's recording has committed (``app.matching.word_indexer``),
    not in the recording: inserting ~480 words into the words' HNSW index costs a dispatch tens of
    milliseconds, and only later searches need them. One partial HNSW index per model and vocabulary over
    ``words::sparsevec(<vocabulary size>)`` (``app.matching.repository.ensure_words_index``), built like
    the fingerprints' indexes. ``model_id`` repeats the fingerprint's, for that index's predicate.
    """

    __tablename__ = "block_words"

    fingerprint_id: Mapped[int] = mapped_column(
        ForeignKey("fingerprints.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[str] = mapped_column(String(128))
    vocabulary_id: Mapped[str] = mapped_column(String(64))
    """The vocabulary ``words`` were computed with (``VisualVocabulary.vocabulary_id``)."""
    words: Mapped[SparseVector] = mapped_column(SPARSEVEC())


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    """Gave up after the last attempt: listed as a dead letter until redelivered."""


class WebhookSubscription(Base):
    """A receiver of events: where to POST them, the HMAC secret, and which kinds and sites it wants."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(200))
    """Shared with the receiver to sign deliveries (HMAC-SHA256); never returned after creation."""
    event_kinds: Mapped[list[str] | None] = mapped_column(ARRAY(String(16)))
    """Null: every kind."""
    sites: Mapped[list[str] | None] = mapped_column(ARRAY(String(200)))
    """Null: every site (events without a site included)."""
    active: Mapped[bool] = mapped_column(Boolean, server_default=true(), default=True)
    description: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """The transactional outbox: one row per event and subscription, written with the event, sent later."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(_check_in("status", DeliveryStatus), name="status"),
        Index(
            "ix_webhook_deliveries_pending",
            "subscription_id",
            "id",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_dead", "id", postgresql_where=text("status = 'dead'")),
        Index("ix_webhook_deliveries_event_id", "event_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE")
    )
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), server_default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"), default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(String(500))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotencyKey(Base):
    """Remembers which event a client's ``Idempotency-Key`` produced, so a retry returns the same result."""

    __tablename__ = "idempotency_keys"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BlockImage(Base):
    """One uploaded block image as received: its bytes live in the image store under their SHA-256."""

    __tablename__ = "block_images"
    __table_args__ = (Index("ix_block_images_sha256", "sha256"),)

    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(Integer)


class ReviewAction(StrEnum):
    MERGE = "merge"
    """The event's pallet is another known pallet: merge it into that one."""
    KEEP_NEW = "keep_new"
    """The event's pallet is indeed new."""


class Review(Base):
    """A person's look at one event: who flagged it (null: the decision rule) and who resolved it how."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint(f"action IS NULL OR {_check_in('action', ReviewAction)}", name="action"),
    )

    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), primary_key=True)
    flagged_by: Mapped[str | None] = mapped_column(String(64))
    flagged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(String(500))
    action: Mapped[str | None] = mapped_column(String(16))
    merged_into: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("pallets.id", ondelete="RESTRICT"))
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolution_event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id", ondelete="RESTRICT"))
    """The merge event a ``merge`` resolution appended."""
