"""``GET /v1/events``: the receipt/dispatch feed for warehouse management systems."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.api.deps import SessionDep, require_role
from app.api.validation import Cursor, Timestamp
from app.db.tables import EventKind
from app.errors import (
    AuthenticationError,
    DatabaseUnavailableError,
    InvalidCursorError,
    PermissionDeniedError,
    error_responses,
)
from app.events.schemas import FeedPage
from app.events.service import EventService
from app.security import Role

router = APIRouter(
    prefix="/v1/events",
    tags=["events"],
    dependencies=[Depends(require_role(Role.READER))],
    responses=error_responses(AuthenticationError, PermissionDeniedError, DatabaseUnavailableError),
)


@router.get("", responses=error_responses(InvalidCursorError))
def list_events(
    session: SessionDep,
    since: Annotated[
        Timestamp | None, Query(description="Only events recorded at or after this time.")
    ] = None,
    kind: Annotated[EventKind | None, Query(description="Only receipts or only dispatches.")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    cursor: Annotated[
        Cursor,
        Query(description="next_cursor of the previous response (empty or absent: from the start)."),
    ] = None,
) -> FeedPage:
    """Follow all events in recording order (oldest first); resume with the last next_cursor, which is
    returned with every page (also the last), so a later request returns only newer events."""
    return EventService(session).feed(since=since, kind=kind, limit=limit, cursor=cursor)
