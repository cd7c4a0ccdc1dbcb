"""``GET /v1/epcis/events``: receipts and dispatches as an EPCIS 2.0 query document (JSON-LD)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from app.api.deps import SessionDep, SettingsDep, require_role
from app.api.validation import PRINTABLE_TEXT_PATTERN, Cursor, Timestamp
from app.epcis.service import EpcisNames, EpcisService
from app.errors import (
    AuthenticationError,
    DatabaseUnavailableError,
    InvalidCursorError,
    PermissionDeniedError,
    error_responses,
)
from app.security import Role

EPCIS_MEDIA_TYPE = "application/ld+json"
EPCIS_VERSION_HEADERS = {"GS1-EPCIS-Version": "2.0.0", "GS1-CBV-Version": "2.0.0"}


@functools.cache
def query_document_schema() -> dict[str, Any]:
    """The project's JSON Schema of the documents this route returns (written from EPCIS 2.0)."""
    text = resources.files("app.epcis").joinpath("epcis-query-document.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references replaced by their definitions, for the OpenAPI document."""
    definitions = schema["$defs"]

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"$ref"}:
                return resolve(definitions[node["$ref"].removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return {key: resolve(value) for key, value in schema.items() if key not in ("$schema", "$id", "$defs")}


class EpcisResponse(JSONResponse):
    media_type = EPCIS_MEDIA_TYPE


router = APIRouter(
    prefix="/v1/epcis",
    tags=["epcis"],
    dependencies=[Depends(require_role(Role.READER))],
    responses=error_responses(AuthenticationError, PermissionDeniedError, DatabaseUnavailableError),
)

UriList = Annotated[
    str | None,
    Query(max_length=4000, pattern=PRINTABLE_TEXT_PATTERN),
]


def _split(values: str | None) -> list[str] | None:
    return [value.strip() for value in values.split(",") if value.strip()] if values else None


@router.get(
    "/events",
    response_class=EpcisResponse,
    responses={
        200: {
            "description": "An EPCISQueryDocument (a Link header names the next page, if any).",
            "content": {EPCIS_MEDIA_TYPE: {"schema": _inlined(query_document_schema())}},
            "headers": {
                "Link": {
                    "description": "The next page (RFC 8288), absent on the last page.",
                    "schema": {"type": "string"},
                },
                **{
                    name: {
                        "description": f"{value} (the standard this document follows).",
                        "schema": {"type": "string"},
                    }
                    for name, value in EPCIS_VERSION_HEADERS.items()
                },
            },
        },
        **error_responses(InvalidCursorError),
    },
)
def query_events(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    ge_event_time: Annotated[
        Timestamp | None, Query(alias="GE_eventTime", description="Only events at or after this time.")
    ] = None,
    lt_event_time: Annotated[
        Timestamp | None, Query(alias="LT_eventTime", description="Only events before this time.")
    ] = None,
    eq_biz_step: Annotated[
        UriList,
        Query(alias="EQ_bizStep", description="Comma-separated: receiving, shipping (or their CBV URIs)."),
    ] = None,
    eq_biz_location: Annotated[
        UriList, Query(alias="EQ_bizLocation", description="Comma-separated site location URIs.")
    ] = None,
    match_epc: Annotated[
        UriList,
        Query(alias="MATCH_epc", description="Comma-separated pallet URIs or GRAI Digital Link URIs."),
    ] = None,
    per_page: Annotated[int, Query(alias="perPage", ge=1, le=200, description="Events per page.")] = 30,
    next_page_token: Annotated[
        Cursor, Query(alias="nextPageToken", description="From the previous page's Link header.")
    ] = None,
) -> EpcisResponse:
    """Receipts and dispatches as GS1 EPCIS 2.0 ObjectEvents (JSON-LD), in recording order."""
    page = EpcisService(session, EpcisNames.from_settings(settings)).query(
        event_time_from=ge_event_time,
        event_time_before=lt_event_time,
        biz_steps=_split(eq_biz_step),
        biz_locations=_split(eq_biz_location),
        epcs=_split(match_epc),
        per_page=per_page,
        page_token=next_page_token,
    )
    headers = dict(EPCIS_VERSION_HEADERS)
    if page.next_page_token is not None:
        next_url = request.url.include_query_params(nextPageToken=page.next_page_token)
        headers["Link"] = f'<{next_url}>; rel="next"'
    return EpcisResponse(page.document, headers=headers)
