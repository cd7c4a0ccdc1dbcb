"""Statements of the corrections: moving a pallet's history, its recordings, and the ``reviews`` rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import CursorResult, Update, and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.tables import RECORDING_KINDS, Event, EventKind, Fingerprint, Pallet, Review

_RECORDING_KIND_VALUES = [kind.value for kind in RECORDING_KINDS]


@dataclass(frozen=True, slots=True)
class RecordingSpan:
    """A pallet's receipts and dispatches: how many, first and last recording time, latest kind."""

    count: int
    first_recorded: datetime
    last_recorded: datetime
    latest_kind: str


class CorrectionRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def event_for_update(self, event_id: int) -> Event | None:
        return self._session.scalars(
            select(Event)
            .where(Event.id == event_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()

    def move_history(self, source: uuid.UUID, target: uuid.UUID) -> tuple[int, int]:
        """Every event and fingerprint of ``source`` to ``target``; how many of each moved."""
        events = self._count(update(Event).where(Event.pallet_id == source).values(pallet_id=target))
        fingerprints = self._count(
            update(Fingerprint).where(Fingerprint.pallet_id == source).values(pallet_id=target)
        )
        self._session.execute(update(Pallet).where(Pallet.merged_into == source).values(merged_into=target))
        self._session.expire_all()
        return events, fingerprints

    def move_recording(self, event_id: int, target: uuid.UUID) -> int:
        """One event and its fingerprints to ``target``; how many fingerprints moved."""
        self._session.execute(update(Event).where(Event.id == event_id).values(pallet_id=target))
        moved = self._count(
            update(Fingerprint).where(Fingerprint.event_id == event_id).values(pallet_id=target)
        )
        self._session.expire_all()
        return moved

    def _count(self, statement: Update) -> int:
        """Rows an UPDATE changed."""
        result = self._session.execute(statement)
        assert isinstance(result, CursorResult)
        return result.rowcount

    def recording_span(self, pallet_id: uuid.UUID) -> RecordingSpan | None:
        """Span of the pallet's receipts and dispatches (``None`` without any)."""
        recordings = and_(Event.pallet_id == pallet_id, Event.kind.in_(_RECORDING_KIND_VALUES))
        row = self._session.execute(
            select(func.count(), func.min(Event.recorded_at), func.max(Event.recorded_at)).where(recordings)
        ).one()
        count, first, last = row
        if not count:
            return None
        latest = self._session.scalars(
            select(Event.kind).where(recordings).order_by(Event.id.desc()).limit(1)
        ).one()
        return RecordingSpan(count=count, first_recorded=first, last_recorded=last, latest_kind=latest)

    def merge_event(self, merged: uuid.UUID, survivor: uuid.UUID) -> Event | None:
        """The merge event that merged ``merged`` into ``survivor`` (latest, if repeated)."""
        return self._session.scalars(
            select(Event)
            .where(
                Event.kind == EventKind.MERGE.value,
                Event.related_pallet_id == merged,
                Event.pallet_id == survivor,
            )
            .order_by(Event.id.desc())
            .limit(1)
        ).one_or_none()

    def review(self, event_id: int) -> Review | None:
        return self._session.get(Review, event_id)

    def add_review(self, review: Review) -> Review:
        self._session.add(review)
        self._session.flush()
        return review

    def reviews(
        self, *, resolved: bool, after_id: int | None, limit: int
    ) -> list[tuple[Event, Review | None]]:
        """Events flagged for review (by the decision rule or a person), open or resolved, in id order."""
        query = select(Event, Review).outerjoin(Review, Review.event_id == Event.id)
        if resolved:
            query = query.where(Review.resolved_at.is_not(None))
        else:
            query = query.where(Event.review, or_(Review.event_id.is_(None), Review.resolved_at.is_(None)))
        if after_id is not None:
            query = query.where(Event.id > after_id)
        rows = self._session.execute(query.order_by(Event.id).limit(limit)).all()
        return [(event, review) for event, review in rows]
