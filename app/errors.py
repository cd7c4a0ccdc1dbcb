"""Domain errors and the one place that renders errors as ``{"type", "detail"}`` JSON."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.runtime import images

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
    headers: ClassVar[Mapping[str, str] | None] = None
    """Response headers that go with the error (``WWW-Authenticate``, ``Retry-After``)."""

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


class EventNotFoundError(NotFoundError):
    """No event with this id."""

    error_type = "event_not_found"


class BlockImageNotFoundError(NotFoundError):
    """No image kept for this block of this event (never stored, or deleted by the retention)."""

    error_type = "block_image_not_found"


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


@contextmanager
def image_errors_as_domain_errors() -> Iterator[None]:
    """Turn the image loader's refusals into the domain errors (and HTTP statuses) of the API."""
    try:
        yield
    except images.ImageTooLargeError as error:
        raise ImageTooLargeError(str(error)) from error
    except images.UnsupportedImageFormatError as error:
        raise UnsupportedImageTypeError(str(error)) from error
    except images.ImageRejectedError as error:
        raise InvalidImageError(str(error)) from error


class RequestTooLargeError(PalletReidError):
    """The request body exceeds the limit for the allowed number of block images."""

    status_code = 413
    error_type = "request_too_large"


class InvalidCursorError(InvalidRequestError):
    """The pagination cursor is malformed."""

    error_type = "invalid_cursor"


class SubscriptionNotFoundError(NotFoundError):
    """No webhook subscription with this id."""

    error_type = "subscription_not_found"


class DeliveryNotFoundError(NotFoundError):
    """No webhook delivery with this id."""

    error_type = "delivery_not_found"


class DeliveryNotDeadError(PalletReidError):
    """Only dead letters can be redelivered (pending ones are still being tried, delivered ones arrived)."""

    status_code = 409
    error_type = "delivery_not_dead"


class IdempotencyConflictError(PalletReidError):
    """The Idempotency-Key was used for a different request."""

    status_code = 409
    error_type = "idempotency_conflict"


class MergeCycleError(PalletReidError):
    """The merge would make a pallet its own survivor (into itself, or into a pallet merged into it)."""

    status_code = 409
    error_type = "merge_cycle"


class PalletMergedError(PalletReidError):
    """The pallet was already merged into another; act on the surviving pallet (``merged_into``)."""

    status_code = 409
    error_type = "pallet_merged"


class DetachConflictError(PalletReidError):
    """The event cannot be detached (not a receipt or dispatch, or the only one of its pallet)."""

    status_code = 409
    error_type = "detach_conflict"


class ReviewConflictError(PalletReidError):
    """The event is not open for review, or was resolved differently."""

    status_code = 409
    error_type = "review_conflict"


class AuthenticationError(PalletReidError):
    """No API key, or one the service does not know."""

    status_code = 401
    error_type = "unauthenticated"
    headers: ClassVar[Mapping[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class PermissionDeniedError(PalletReidError):
    """The API key's role does not allow this operation."""

    status_code = 403
    error_type = "forbidden"


RETRY_AFTER_SECONDS = 5
"""What 503 responses tell clients to wait before retrying."""


class ServiceNotReadyError(PalletReidError):
    """The service cannot serve requests yet."""

    status_code = 503
    error_type = "not_ready"
    headers: ClassVar[Mapping[str, str] | None] = {"Retry-After": str(RETRY_AFTER_SECONDS)}


class DatabaseUnavailableError(ServiceNotReadyError):
    """The database is down, restarting or refused the work for a transient reason; retry later."""

    error_type = "database_unavailable"


class ConfigurationError(RuntimeError):
    """The service is configured so that it must not start; the message says what to change."""


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


def _render(
    status_code: int, error_type: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    content = {"type": error_type, "detail": detail}
    return JSONResponse(status_code=status_code, content=content, headers=headers)


def _is_transient_database_error(error: Exception) -> bool:
    """Connection lost or refused, server shutting down, deadlock or serialisation failure: worth a retry."""
    if isinstance(error, OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


async def _domain_error_handler(request: Request, error: Exception) -> JSONResponse:
    if isinstance(error, PalletReidError):
        return _render(error.status_code, error.error_type, error.detail, error.headers)
    if _is_transient_database_error(error):
        logger.warning("database unavailable on %s %s: %s", request.method, request.url.path, error)
        unavailable = DatabaseUnavailableError("the database is unavailable; retry later")
        return _render(503, unavailable.error_type, unavailable.detail, unavailable.headers)
    if isinstance(error, DataError):
        # Input validation should stop every value PostgreSQL cannot store; this is the safety net.
        logger.warning("database rejected data on %s %s: %s", request.method, request.url.path, error.orig)
        return _render(422, InvalidRequestError.error_type, "a value in the request cannot be stored")
    if isinstance(error, RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', '')}"
            for item in jsonable_encoder(error.errors())
        )
        return _render(422, VALIDATION_ERROR_TYPE, problems)
    if isinstance(error, StarletteHTTPException):
        # Raised by the framework: malformed multipart (400), body over the limit (413), unknown route (404).
        error_type = RequestTooLargeError.error_type if error.status_code == 413 else HTTP_ERROR_TYPE
        return _render(error.status_code, error_type, str(error.detail), error.headers)
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return _render(500, "internal_error", "internal server error")


VALIDATION_ERROR_TYPE = "validation_error"
"""``type`` of a 422 for malformed parameters (rendered from FastAPI's ``RequestValidationError``)."""

HTTP_ERROR_TYPE = "http_error"
"""``type`` of a 400 for a body that cannot be parsed (and of other framework HTTP errors)."""

_ERROR_SCHEMA_REF = "#/components/schemas/ErrorResponse"
_FRAMEWORK_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")


def declare_error_body(openapi: dict[str, Any]) -> dict[str, Any]:
    """Make ``openapi`` declare the one error body ``{"type", "detail"}`` for every 4xx/5xx response.

    FastAPI documents request validation failures as its own ``HTTPValidationError`` (``detail`` a list),
    but ``_domain_error_handler`` renders them as ``ErrorResponse`` like every other error; generated
    clients must parse what is sent. Changes ``openapi`` in place (idempotent) and returns it.
    """
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault(
        "ErrorResponse", ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    for path_item in openapi.get("paths", {}).values():
        for operation in path_item.values():
            if "requestBody" in operation:
                # The framework answers a body it cannot parse (bad JSON, broken multipart) before validation.
                operation.setdefault("responses", {}).setdefault(
                    "400", {"description": f"{HTTP_ERROR_TYPE}: the body cannot be parsed"}
                )
            for status, response in operation.get("responses", {}).items():
                if str(status)[0] not in "45":
                    continue
                response["content"] = {
                    "application/json": {
                        **response.get("content", {}).get("application/json", {}),
                        "schema": {"$ref": _ERROR_SCHEMA_REF},
                    }
                }
                if str(status) == "422":
                    response["description"] = _with_validation_error(response.get("description", ""))
    for name in _FRAMEWORK_ERROR_SCHEMAS:
        components.pop(name, None)
    return openapi


def _with_validation_error(description: str) -> str:
    """The 422 description naming ``validation_error`` (FastAPI's own says "Validation Error")."""
    types = [part.strip() for part in description.split(",") if part.strip() and part != "Validation Error"]
    if VALIDATION_ERROR_TYPE not in types:
        types.insert(0, VALIDATION_ERROR_TYPE)
    return ", ".join(types)


def install_error_schema(app: FastAPI) -> None:
    """Serve the OpenAPI document with ``declare_error_body`` applied (FastAPI regenerates it on changes)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return declare_error_body(generate())

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Route domain, validation, HTTP and unexpected errors through the one renderer."""
    for error_class in (PalletReidError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(error_class, _domain_error_handler)
