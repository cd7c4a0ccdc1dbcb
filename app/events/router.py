"""``GET /v1/events``: the receipt/dispatch feed for warehouse management systems."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.api.deps import SessionDep, require_role
from app.api.validation import Cursor, DamageCode, Grai, ShortText, Sscc, Timestamp
from app.db.tables import EventKind, QualityClass
from app.errors import (
    AuthenticationError,
    DatabaseUnavailableError,
    InvalidCursorError,
    PermissionDeniedError,
    error_responses,
)
from app.events.repository import BusinessFilter
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
    quality_class: Annotated[QualityClass | None, Query(description="Only events with this grade.")] = None,
    damaged: Annotated[bool | None, Query(description="Only events reported damaged (or not).")] = None,
    damage_code: Annotated[DamageCode | None, Query(description="Only events with this damage code.")] = None,
    sscc: Annotated[Sscc | None, Query(description="Only events of this load (SSCC).")] = None,
    carrier: Annotated[ShortText | None, Query(description="Only events of this carrier.")] = None,
    grai: Annotated[Grai | None, Query(description="Only events of the pallet with this GRAI.")] = None,
    asset_code: Annotated[ShortText | None, Query(description="Only events with this asset code.")] = None,
) -> FeedPage:
    """Follow all events in recording order (oldest first); resume with the last next_cursor, which is
    returned with every page (also the last), so a later request returns only newer events."""
    business = BusinessFilter(
        quality_class=quality_class.value if quality_class is not None else None,
        damaged=damaged,
        damage_code=damage_code,
        sscc=sscc,
        carrier=carrier,
        grai=grai,
        asset_code=asset_code,
    )
    return EventService(session).feed(since=since, kind=kind, limit=limit, cursor=cursor, business=business)
