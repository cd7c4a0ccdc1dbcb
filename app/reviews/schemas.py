"""Requests and responses of the corrections: merge, detach, flag, the review queue and its resolutions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.db.tables import EventKind, ReviewAction
from app.matching.schemas import CandidateMatch, Verification

_PALLET = "3f2b8c1e-6d0a-4c8e-9b1f-2a7d5e4c9b10"
_OTHER = "8a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"into": _PALLET}]})

    into: uuid.UUID = Field(description="The surviving pallet: it receives the whole history.")


class MergeResult(BaseModel):
    """A merge: the pallet's events and fingerprints now belong to ``into``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event_id": 97,
                    "pallet_id": _OTHER,
                    "into": _PALLET,
                    "events_moved": 2,
                    "fingerprints_moved": 12,
                    "merged_at": "2026-12-04T06:10:00Z",
                }
            ]
        }
    )

    event_id: int = Field(description="The merge event appended to the survivor's history and the feed.")
    pallet_id: uuid.UUID = Field(description="The merged pallet (now status merged).")
    into: uuid.UUID
    events_moved: int
    fingerprints_moved: int
    merged_at: datetime


class DetachResult(BaseModel):
    """A detach: the event and its fingerprints left ``from_pallet_id`` for a new pallet."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event_id": 42,
                    "from_pallet_id": _PALLET,
                    "pallet_id": _OTHER,
                    "fingerprints_moved": 6,
                    "detach_event_ids": [98, 99],
                }
            ]
        }
    )

    event_id: int = Field(description="The receipt or dispatch that moved.")
    from_pallet_id: uuid.UUID
    pallet_id: uuid.UUID = Field(description="The new pallet the event now belongs to.")
    fingerprints_moved: int
    detach_event_ids: list[int] = Field(
        description="The detach events appended: in the old pallet's history, then in the new one's."
    )


class FlagRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "two blocks swapped"}]}
    )

    reason: str | None = Field(default=None, max_length=500, description="Why a person should look at it.")


class ResolveRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"action": "merge", "pallet_id": _PALLET}, {"action": "keep_new"}]},
    )

    action: ReviewAction = Field(
        description="merge: the event's pallet is `pallet_id` (merged into it); keep_new: it is a new pallet."
    )
    pallet_id: uuid.UUID | None = Field(default=None, description="With merge: the pallet it really is.")

    @model_validator(mode="after")
    def _pallet_with_merge_only(self) -> Self:
        if (self.action is ReviewAction.MERGE) != (self.pallet_id is not None):
            raise ValueError("pallet_id is required with action merge and not allowed with keep_new")
        return self


class Resolution(BaseModel):
    action: ReviewAction
    pallet_id: uuid.UUID | None = Field(description="merge: the pallet the event's pallet was merged into.")
    resolved_by: str
    resolved_at: datetime
    merge_event_id: int | None = Field(description="merge: the merge event (null if already one pallet).")


class ReviewOut(BaseModel):
    """An event flagged for review: what the service decided, the candidates, and the resolution if any."""

    event_id: int
    status: Literal["open", "resolved"]
    kind: EventKind
    pallet_id: uuid.UUID = Field(description="The pallet the event belongs to now.")
    recorded_at: datetime
    flagged_by: str | None = Field(description="The operator who flagged it; null: the decision rule did.")
    flagged_at: datetime | None
    reason: str | None
    score: float | None
    verification: Verification | None = Field(
        description="The geometric evidence recorded with the decision."
    )
    candidates: list[CandidateMatch] = Field(
        description="The known pallets it was compared with, best first."
    )
    resolution: Resolution | None


class ReviewPage(BaseModel):
    """A page of reviews in event order; pass ``next_cursor`` as ``cursor`` for the next page."""

    data: list[ReviewOut]
    next_cursor: str | None
