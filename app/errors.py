"""Domain errors and the one place that renders errors as ``{"type", "detail"}`` JSON."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ErrorResponse(BaseModel):
    """Body of every error response."""

    type: str
    detail: str

    model_config = {
        "json_schema_extra": {"examples": [{"type": "pallet_not_found", "detail": "no pallet 9f1c..."}]}
    }


class PalletReidError(Exception):
    """Base of the domain errors; subclasses fix the HTTP status and the machine-readable type."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(PalletReidError):
    """The requested resource does not exist."""

    status_code = 404
    error_type = "not_found"


class PalletNotFoundError(NotFoundError):
    """No pallet with this id."""

    error_type = "pallet_not_found"


class InvalidRequestError(PalletReidError):
    """The request is well-formed but cannot be processed."""

    status_code = 422
    error_type = "invalid_request"


class InvalidImageError(InvalidRequestError):
    """A block image could not be decoded."""

    error_type = "invalid_image"


class UnsupportedImageTypeError(PalletReidError):
    """A block image is not JPEG, PNG or WebP."""

    status_code = 415
    error_type = "unsupported_image_type"


class ImageTooLargeError(PalletReidError):
    """A block image exceeds the size limit."""

    status_code = 413
    error_type = "image_too_large"


class InvalidCursorError(InvalidRequestError):
    """The pagination cursor is malformed."""

    error_type = "invalid_cursor"


class IdempotencyConflictError(PalletReidError):
    """The Idempotency-Key was used for a different request."""

    status_code = 409
    error_type = "idempotency_conflict"


class ServiceNotReadyError(PalletReidError):
    """The service cannot serve requests yet."""

    status_code = 503
    error_type = "not_ready"


def error_responses(*errors: type[PalletReidError]) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses=`` entries for the given domain errors (grouped by status)."""
    by_status: dict[int, list[type[PalletReidError]]] = {}
    for error in errors:
        by_status.setdefault(error.status_code, []).append(error)
    return {
        status: {
            "model": ErrorResponse,
            "description": ", ".join(error.error_type for error in group),
            "content": {
                "application/json": {
                    "example": {"type": group[0].error_type, "detail": (group[0].__doc__ or "").strip()}
                }
            },
        }
        for status, group in by_status.items()
    }


def _render(status_code: int, error_type: str, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"type": error_type, "detail": detail})


async def _domain_error_handler(request: Request, error: Exception) -> JSONResponse:
    if isinstance(error, PalletReidError):
        return _render(error.status_code, error.error_type, error.detail)
    if isinstance(error, RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', '')}"
            for item in jsonable_encoder(error.errors())
        )
        return _render(422, "validation_error", problems)
    if isinstance(error, StarletteHTTPException):
        return _render(error.status_code, "http_error", str(error.detail))
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return _render(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Route domain, validation, HTTP and unexpected errors through the one renderer."""
    for error_class in (PalletReidError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(error_class, _domain_error_handler)
