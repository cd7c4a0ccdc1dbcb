"""Event history and feed responses."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict

from app.db.tables import EventKind, MatchDecision, QualityClass

_EVENT_EXAMPLE: JsonDict = {
    "id": 42,
    "pallet_id": "3f2b8c1e-6d0a-4c8e-9b1f-2a7d5e4c9b10",
    "kind": "receipt",
    "decision": "registered",
    "score": 0.12,
    "site": "DE-HAM-01",
    "gate": "dock-3",
    "external_ref": "ASN-2026-000123",
    "captured_at": "2026-11-27T08:15:00Z",
    "recorded_at": "2026-11-27T08:15:02.120Z",
}


class EventOut(BaseModel):
    """One receipt or dispatch, or a correction (merge, detach) of a pallet's history."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [_EVENT_EXAMPLE]})

    id: int
    pallet_id: uuid.UUID
    kind: EventKind
    decision: MatchDecision | None = Field(description="Receipts and dispatches only; null for corrections.")
    score: float | None
    site: str | None
    gate: str | None
    external_ref: str | None
    captured_at: datetime | None
    recorded_at: datetime
    quality_class: QualityClass | None = Field(default=None, description="Sorting grade reported.")
    damaged: bool | None = Field(default=None, description="Damage reported (null: not reported).")
    damage_codes: list[str] | None = Field(default=None, description="Damage codes reported.")
    sscc: str | None = Field(default=None, description="SSCC of the load (check digit verified).")
    carrier: str | None = None
    grai: str | None = Field(default=None, description="The pallet's GS1 GRAI with serial.")
    asset_code: str | None = Field(default=None, description="Another code read from the pallet.")
    related_pallet_id: uuid.UUID | None = Field(
        default=None,
        description="merge: the pallet merged into this one; detach: the pallet on the other side.",
    )
    related_event_id: int | None = Field(
        default=None, description="detach: the receipt or dispatch that moved."
    )
    actor: str | None = Field(default=None, description="Corrections: the API key name of the operator.")


class EventPage(BaseModel):
    """A page of events; pass ``next_cursor`` as ``cursor`` for the next page (null: no more)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [_EVENT_EXAMPLE], "next_cursor": None}]}
    )

    data: list[EventOut]
    next_cursor: str | None


class FeedPage(BaseModel):
    """A page of the event feed. ``next_cursor`` is never null: it points after the last event of this page
    (or, for an empty page, where the request started), so asking again with it returns only newer events."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"data": [_EVENT_EXAMPLE], "next_cursor": "WzQyXQ", "has_more": False}]
        }
    )

    data: list[EventOut]
    next_cursor: str = Field(description="Pass as ``cursor`` to continue after this page, now or later.")
    has_more: bool = Field(
        description="More events were already recorded after this page: ask again at once (else poll later)."
    )
