"""Event selection for the EPCIS query interface (receipts and dispatches, in id order)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlalchemy.orm import Session

from app.db.tables import Event, EventKind


@dataclass(frozen=True)
class ObjectEventQuery:
    """What ``GET /v1/epcis/events`` asked for, in the service's terms (``None``: no restriction)."""

    kinds: Sequence[EventKind]
    event_time_from: datetime | None = None
    event_time_before: datetime | None = None
    sites: Sequence[str] | None = None
    pallets_without_grai: Sequence[uuid.UUID] | None = None
    """With ``grais``: MATCH_epc; a pallet named by our URI (events that carry no GRAI)."""
    grais: Sequence[str] | None = None


def event_time() -> ColumnElement[datetime]:
    """An event's EPCIS eventTime: when the images were taken, else when it was recorded."""
    return func.coalesce(Event.captured_at, Event.recorded_at)


class EpcisRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def object_events(self, query: ObjectEventQuery, *, after_id: int | None, limit: int) -> list[Event]:
        """Receipts and dispatches matching ``query``, in id (recording) order after ``after_id``."""
        clauses: list[ColumnElement[bool]] = [Event.kind.in_([kind.value for kind in query.kinds])]
        if after_id is not None:
            clauses.append(Event.id > after_id)
        if query.event_time_from is not None:
            clauses.append(event_time() >= query.event_time_from)
        if query.event_time_before is not None:
            clauses.append(event_time() < query.event_time_before)
        if query.sites is not None:
            clauses.append(Event.site.in_(query.sites) if query.sites else false())
        if query.pallets_without_grai is not None or query.grais is not None:
            clauses.append(
                or_(
                    and_(Event.pallet_id.in_(query.pallets_without_grai or []), Event.grai.is_(None)),
                    Event.grai.in_(query.grais or []),
                )
            )
        return list(self._session.scalars(select(Event).where(*clauses).order_by(Event.id).limit(limit)))
