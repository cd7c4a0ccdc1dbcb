"""Admin corrections: `/v1/reviews`, `POST /v1/pallets/{id}/merge`, `POST /v1/events/{id}/detach|flag`."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Header, Path, Query

from app.api.deps import SessionDep, require_role
from app.errors import (
    AuthenticationError,
    DatabaseUnavailableError,
    DetachConflictError,
    ErrorResponse,
    EventNotFoundError,
    IdempotencyConflictError,
    InvalidCursorError,
    MergeCycleError,
    PalletMergedError,
    PalletNotFoundError,
    PermissionDeniedError,
    ReviewConflictError,
    error_responses,
)
from app.reviews.schemas import (
    DetachResult,
    FlagRequest,
    MergeRequest,
    MergeResult,
    ResolveRequest,
    ReviewOut,
    ReviewPage,
)
from app.reviews.service import CorrectionService, ReviewService
from app.security import Principal, Role

logger = logging.getLogger(__name__)

AdminDep = Annotated[Principal, Depends(require_role(Role.ADMIN))]
EventIdPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="Event id.")]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Retry-safe key; a retry returns the same result.",
    ),
]
_COMMON = error_responses(AuthenticationError, PermissionDeniedError, DatabaseUnavailableError)
_MALFORMED_BODY: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse, "description": "http_error: the body is not valid JSON"}
}

reviews_router = APIRouter(prefix="/v1/reviews", tags=["reviews"], responses=_COMMON)
pallet_corrections_router = APIRouter(prefix="/v1/pallets", tags=["pallets"], responses=_COMMON)
event_corrections_router = APIRouter(prefix="/v1/events", tags=["events"], responses=_COMMON)


@reviews_router.get("", responses=error_responses(InvalidCursorError))
def list_reviews(
    principal: AdminDep,
    session: SessionDep,
    status: Annotated[Literal["open", "resolved"], Query(description="Open (default) or resolved.")] = "open",
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> ReviewPage:
    """Events flagged for review (by the decision rule or an operator) with their candidates, oldest first."""
    return ReviewService(session).list(resolved=status == "resolved", limit=limit, cursor=cursor)


@reviews_router.post(
    "/{event_id}",
    responses={
        **_MALFORMED_BODY,
        **error_responses(
            EventNotFoundError, PalletNotFoundError, ReviewConflictError, MergeCycleError, PalletMergedError
        ),
    },
)
def resolve_review(
    event_id: EventIdPath, request: ResolveRequest, principal: AdminDep, session: SessionDep
) -> ReviewOut:
    """Resolve an open review: merge the event's pallet into the pallet it really is, or keep it new."""
    review = ReviewService(session).resolve(event_id, request.action, request.pallet_id, actor=principal.name)
    logger.info(
        "review of event %d resolved by %s: %s%s",
        event_id,
        principal.name,
        request.action.value,
        f" into {request.pallet_id}" if request.pallet_id is not None else "",
    )
    return review


@event_corrections_router.post(
    "/{event_id}/flag",
    responses={**_MALFORMED_BODY, **error_responses(EventNotFoundError, ReviewConflictError)},
)
def flag_event(
    event_id: EventIdPath,
    principal: AdminDep,
    session: SessionDep,
    request: Annotated[FlagRequest | None, Body()] = None,
) -> ReviewOut:
    """Put a receipt or dispatch into the open review queue (again, if it was resolved)."""
    reason = request.reason if request is not None else None
    review = ReviewService(session).flag(event_id, actor=principal.name, reason=reason)
    logger.info("event %d flagged for review by %s", event_id, principal.name)
    return review


@event_corrections_router.post(
    "/{event_id}/detach",
    responses=error_responses(EventNotFoundError, DetachConflictError, IdempotencyConflictError),
)
def detach_event(
    event_id: EventIdPath,
    principal: AdminDep,
    session: SessionDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> DetachResult:
    """Move a receipt or dispatch and its fingerprints from its pallet to a new pallet."""
    result = CorrectionService(session).detach(
        event_id, actor=principal.name, idempotency_key=idempotency_key
    )
    logger.info(
        "event %d detached by %s from pallet %s to new pallet %s",
        event_id,
        principal.name,
        result.from_pallet_id,
        result.pallet_id,
    )
    return result


@pallet_corrections_router.post(
    "/{pallet_id}/merge",
    responses={
        **_MALFORMED_BODY,
        **error_responses(PalletNotFoundError, MergeCycleError, PalletMergedError, IdempotencyConflictError),
    },
)
def merge_pallet(
    pallet_id: uuid.UUID,
    request: MergeRequest,
    principal: AdminDep,
    session: SessionDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> MergeResult:
    """Merge this pallet into another: its events and fingerprints move there; it stays as status merged."""
    result = CorrectionService(session).merge(
        pallet_id, request.into, actor=principal.name, idempotency_key=idempotency_key
    )
    logger.info(
        "pallet %s merged into %s by %s (event %d)", pallet_id, request.into, principal.name, result.event_id
    )
    return result
