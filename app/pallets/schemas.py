"""Pallet responses."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict

from app.db.tables import PalletStatus, QualityClass

_PALLET_EXAMPLE: JsonDict = {
    "pallet_id": "3f2b8c1e-6d0a-4c8e-9b1f-2a7d5e4c9b10",
    "status": "dispatched",
    "first_seen": "2026-11-02T07:01:13Z",
    "last_seen": "2026-11-27T08:15:02Z",
    "receipts": 3,
    "dispatches": 3,
    "external_refs": ["ASN-2026-000123", "DN-2026-004711"],
}


class PalletOut(BaseModel):
    """A known pallet and a summary of its history."""

    model_config = ConfigDict(json_schema_extra={"examples": [_PALLET_EXAMPLE]})

    pallet_id: uuid.UUID
    status: PalletStatus
    quality_class: QualityClass | None = None
    """The quality class most recently reported (null: never reported)."""
    first_seen: datetime
    last_seen: datetime
    receipts: int
    dispatches: int
    external_refs: list[str]
    merged_into: uuid.UUID | None = Field(
        default=None,
        description="With status merged: the pallet this one was merged into (its history is there).",
    )


class PalletPage(BaseModel):
    """A page of pallets; pass ``next_cursor`` as ``cursor`` for the next page (null: no more)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [_PALLET_EXAMPLE], "next_cursor": None}]}
    )

    data: list[PalletOut]
    next_cursor: str | None
