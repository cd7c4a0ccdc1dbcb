"""``GET /v1/pallets``, ``GET /v1/pallets/{pallet_id}`` and its event history."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.api.deps import SessionDep, require_role
from app.api.validation import Cursor, ShortText, Timestamp
from app.db.tables import PalletStatus
from app.errors import (
    AuthenticationError,
    DatabaseUnavailableError,
    InvalidCursorError,
    PalletNotFoundError,
    PermissionDeniedError,
    error_responses,
)
from app.events.schemas import EventPage
from app.pallets.schemas import PalletOut, PalletPage
from app.pallets.service import PalletService
from app.security import Role

router = APIRouter(
    prefix="/v1/pallets",
    tags=["pallets"],
    dependencies=[Depends(require_role(Role.READER))],
    responses=error_responses(AuthenticationError, PermissionDeniedError, DatabaseUnavailableError),
)

LimitQuery = Annotated[int, Query(ge=1, le=200, description="Page size.")]
CursorQuery = Annotated[Cursor, Query(description="next_cursor of the previous page (empty: none).")]


@router.get("", responses=error_responses(InvalidCursorError))
def list_pallets(
    session: SessionDep,
    status: Annotated[PalletStatus | None, Query(description="Only pallets with this status.")] = None,
    site: Annotated[ShortText | None, Query(description="Only pallets seen at this site.")] = None,
    external_ref: Annotated[
        ShortText | None, Query(description="Only pallets with an event of this reference.")
    ] = None,
    seen_since: Annotated[
        Timestamp | None, Query(description="Only pallets seen at or after this time.")
    ] = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> PalletPage:
    """List known pallets in registration order, filtered."""
    return PalletService(session).list(
        status=status, site=site, external_ref=external_ref, seen_since=seen_since, limit=limit, cursor=cursor
    )


@router.get("/{pallet_id}", responses=error_responses(PalletNotFoundError))
def get_pallet(pallet_id: uuid.UUID, session: SessionDep) -> PalletOut:
    """One pallet: its status and a summary of its receipts and dispatches."""
    return PalletService(session).get(pallet_id)


@router.get("/{pallet_id}/events", responses=error_responses(PalletNotFoundError, InvalidCursorError))
def list_pallet_events(
    pallet_id: uuid.UUID, session: SessionDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> EventPage:
    """A pallet's receipts and dispatches, newest first."""
    return PalletService(session).events(pallet_id, limit=limit, cursor=cursor)
