"""The event feed: every receipt and dispatch in recording order, for warehouse systems to follow."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from app.db.tables import EventKind
from app.events.repository import EventRepository
from app.events.schemas import EventOut, EventPage
from app.pagination import decode_id_cursor, encode_cursor


class EventService:
    def __init__(self, session: Session) -> None:
        self._events = EventRepository(session)

    def feed(
        self, *, since: datetime | None, kind: EventKind | None, limit: int, cursor: str | None
    ) -> EventPage:
        rows = self._events.feed(
            since=since,
            kind=kind.value if kind is not None else None,
            after_id=decode_id_cursor(cursor),
            limit=limit + 1,
        )
        page = rows[:limit]
        next_cursor = encode_cursor([page[-1].id]) if len(rows) > limit else None
        return EventPage(data=[EventOut.model_validate(event) for event in page], next_cursor=next_cursor)
