"""``GET /v1/events/{event_id}/blocks/{position}``: a block image as the camera station sent it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response

from app.api.deps import SessionDep, require_role
from app.errors import (
    AuthenticationError,
    BlockImageNotFoundError,
    DatabaseUnavailableError,
    PermissionDeniedError,
    error_responses,
)
from app.images.dependencies import ImageStoreDep
from app.images.service import BlockImageService
from app.security import Role

router = APIRouter(
    prefix="/v1/events",
    tags=["events"],
    dependencies=[Depends(require_role(Role.READER))],
    responses=error_responses(AuthenticationError, PermissionDeniedError, DatabaseUnavailableError),
)

EventIdPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="Event id.")]


@router.get(
    "/{event_id}/blocks/{position}",
    response_class=Response,
    responses={
        200: {
            "description": "The image bytes as received, with their media type.",
            "content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}},
        },
        **error_responses(BlockImageNotFoundError),
    },
)
def get_block_image(
    event_id: EventIdPath,
    position: Annotated[int, Path(ge=0, le=32767, description="Block position (upload order, from 0).")],
    session: SessionDep,
    store: ImageStoreDep,
) -> Response:
    """One uploaded block image of a receipt or dispatch (404 once the retention deleted it)."""
    data, media_type = BlockImageService(session, store).image(event_id, position)
    return Response(content=data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})
