"""Event queries; the only place that selects from ``events`` and ``idempotency_keys``."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import Event, IdempotencyKey


class EventRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, event: Event) -> Event:
        self._session.add(event)
        self._session.flush()
        return event

    def for_pallet(self, pallet_id: uuid.UUID, *, before_id: int | None, limit: int) -> list[Event]:
        """A pallet's events, newest first, older than ``before_id``."""
        query = select(Event).where(Event.pallet_id == pallet_id)
        if before_id is not None:
            query = query.where(Event.id < before_id)
        return list(self._session.scalars(query.order_by(Event.id.desc()).limit(limit)))

    def feed(
        self, *, since: datetime | None, kind: str | None, after_id: int | None, limit: int
    ) -> list[Event]:
        """All events in recording order (oldest first), for systems that follow the stream."""
        query = select(Event)
        if since is not None:
            query = query.where(Event.recorded_at >= since)
        if kind is not None:
            query = query.where(Event.kind == kind)
        if after_id is not None:
            query = query.where(Event.id > after_id)
        return list(self._session.scalars(query.order_by(Event.id).limit(limit)))

    def idempotency_key(self, kind: str, key: str) -> IdempotencyKey | None:
        return self._session.get(IdempotencyKey, (kind, key))

    def event(self, event_id: int) -> Event | None:
        return self._session.get(Event, event_id)

    def add_idempotency_key(self, record: IdempotencyKey) -> None:
        self._session.add(record)
        self._session.flush()
