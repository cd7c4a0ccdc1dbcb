"""Event selection for the EPCIS query interface (receipts and dispatches, in id order)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, String, and_, false, func, or_, select
from sqlalchemy.orm import Session

from app.db.tables import RECORDING_KINDS, Event, EventKind

CORRECTION_KINDS = (EventKind.MERGE, EventKind.DETACH)


@dataclass(frozen=True)
class ObjectEventQuery:
    """What ``GET /v1/epcis/events`` asked for, in the service's terms (``None``: no restriction)."""

    kinds: Sequence[EventKind]
    event_time_from: datetime | None = None
    event_time_before: datetime | None = None
    sites: Sequence[str] | None = None
    pallets_without_grai: Sequence[uuid.UUID] | None = None
    """With ``grais``: MATCH_epc; a pallet named by our URI (events that carry no GRAI), as recorded."""
    grais: Sequence[str] | None = None


def recorded_pallet() -> ColumnElement[str]:
    """The pallet a recording named when it was made (its stored result), whatever corrections moved later."""
    return Event.result.op("->>", return_type=String)("pallet_id")


def event_time() -> ColumnElement[datetime]:
    """An event's EPCIS eventTime: when the images were taken, else when it was recorded."""
    return func.coalesce(Event.captured_at, Event.recorded_at)


class EpcisRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def object_events(self, query: ObjectEventQuery, *, after_id: int | None, limit: int) -> list[Event]:
        """Receipts and dispatches matching ``query`` and all merges and detaches (their declarations are
        filtered by the service), in id (recording) order after ``after_id``."""
        clauses: list[ColumnElement[bool]] = [Event.kind.in_([kind.value for kind in query.kinds])]
        if query.event_time_from is not None:
            clauses.append(event_time() >= query.event_time_from)
        if query.event_time_before is not None:
            clauses.append(event_time() < query.event_time_before)
        if query.sites is not None:
            clauses.append(Event.site.in_(query.sites) if query.sites else false())
        if query.pallets_without_grai is not None or query.grais is not None:
            pallets = [str(pallet) for pallet in query.pallets_without_grai or []]
            clauses.append(
                or_(
                    and_(recorded_pallet().in_(pallets), Event.grai.is_(None)),
                    Event.grai.in_(query.grais or []),
                )
            )
        selected = or_(and_(*clauses), Event.kind.in_([kind.value for kind in CORRECTION_KINDS]))
        statement = select(Event).where(selected)
        if after_id is not None:
            statement = statement.where(Event.id > after_id)
        return list(self._session.scalars(statement.order_by(Event.id).limit(limit)))

    def recorded_as(self, pallet_id: uuid.UUID, *, before_id: int) -> list[Event]:
        """Receipts and dispatches recorded under ``pallet_id`` without a GRAI, before event ``before_id``."""
        return list(
            self._session.scalars(
                select(Event)
                .where(
                    Event.kind.in_([kind.value for kind in RECORDING_KINDS]),
                    recorded_pallet() == str(pallet_id),
                    Event.grai.is_(None),
                    Event.id < before_id,
                )
                .order_by(Event.id)
            )
        )

    def event(self, event_id: int) -> Event | None:
        return self._session.get(Event, event_id)

    def first_detach_id(self, moved_event_id: int) -> int | None:
        """Id of the first of the two detach events written when ``moved_event_id`` moved."""
        return self._session.scalar(
            select(func.min(Event.id)).where(
                Event.kind == EventKind.DETACH.value, Event.related_event_id == moved_event_id
            )
        )
