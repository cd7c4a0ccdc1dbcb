"""Event queries; the only place that selects from ``events`` and ``idempotency_keys``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from app.db.tables import Event, IdempotencyKey
from app.webhooks.repository import WebhookRepository


@dataclass(frozen=True)
class BusinessFilter:
    """Business facts an event must carry to be listed (unset ones do not filter)."""

    quality_class: str | None = None
    damaged: bool | None = None
    damage_code: str | None = None
    sscc: str | None = None
    carrier: str | None = None
    grai: str | None = None
    asset_code: str | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        equal = {
            Event.quality_class: self.quality_class,
            Event.damaged: self.damaged,
            Event.sscc: self.sscc,
            Event.carrier: self.carrier,
            Event.grai: self.grai,
            Event.asset_code: self.asset_code,
        }
        clauses = [column == value for column, value in equal.items() if value is not None]
        if self.damage_code is not None:
            clauses.append(Event.damage_codes.contains([self.damage_code]))
        return clauses


class EventRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, event: Event) -> Event:
        """Store ``event`` with its webhook deliveries (the outbox), in the caller's transaction: every
        event that commits, recording or correction, is delivered; one that rolls back never is."""
        self._session.add(event)
        self._session.flush()
        WebhookRepository(self._session).enqueue(event)
        return event

    def for_pallet(self, pallet_id: uuid.UUID, *, before_id: int | None, limit: int) -> list[Event]:
        """A pallet's events, newest first, older than ``before_id``."""
        query = select(Event).where(Event.pallet_id == pallet_id)
        if before_id is not None:
            query = query.where(Event.id < before_id)
        return list(self._session.scalars(query.order_by(Event.id.desc()).limit(limit)))

    def feed(
        self,
        *,
        since: datetime | None,
        kind: str | None,
        after_id: int | None,
        limit: int,
        business: BusinessFilter | None = None,
    ) -> list[Event]:
        """All events in recording order (oldest first), for systems that follow the stream."""
        query = select(Event).where(*(business.clauses() if business is not None else ()))
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
