"""The event feed: every receipt and dispatch in recording order, for warehouse systems to follow."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from app.db.tables import EventKind
from app.events.repository import BusinessFilter, EventRepository
from app.events.schemas import EventOut, FeedPage
from app.pagination import decode_id_cursor, encode_cursor


class EventService:
    def __init__(self, session: Session) -> None:
        self._events = EventRepository(session)

    def feed(
        self,
        *,
        since: datetime | None,
        kind: EventKind | None,
        limit: int,
        cursor: str | None,
        business: BusinessFilter | None = None,
    ) -> FeedPage:
        """Events after ``cursor`` in id order, and a cursor after the last of them.

        Exact resumption rests on ids committing in increasing order (recordings are serialised by the
        identification lock, see ``app.matching.service``): once an id is visible, no smaller one can
        appear later, so "after the last id seen" never skips an event.
        """
        after_id = decode_id_cursor(cursor)
        rows = self._events.feed(
            since=since,
            kind=kind.value if kind is not None else None,
            after_id=after_id,
            limit=limit + 1,
            business=business,
        )
        page = rows[:limit]
        last_id = page[-1].id if page else (after_id if after_id is not None else 0)
        return FeedPage(
            data=[EventOut.model_validate(event) for event in page],
            next_cursor=encode_cursor([last_id]),
            has_more=len(rows) > limit,
        )
