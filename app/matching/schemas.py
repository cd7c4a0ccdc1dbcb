"""Match result returned by ``POST /v1/receipts`` and ``POST /v1/dispatches``."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

from app.db.tables import EventKind, MatchDecision

_PALLET = "3f2b8c1e-6d0a-4c8e-9b1f-2a7d5e4c9b10"
_OTHER = "8a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


class BlockMatch(BaseModel):
    """What one query block voted for."""

    position: int = Field(description="Index of the block in the upload (0-based).")
    pallet_id: uuid.UUID | None = Field(description="Nearest known pallet, null if nothing was found.")
    similarity: float | None = Field(description="Cosine similarity to that pallet's closest block.")


class CandidateMatch(BaseModel):
    """A shortlisted pallet, best first: its block votes and its verified score."""

    pallet_id: uuid.UUID
    votes: int = Field(description="Query blocks whose nearest stored block (above the threshold) is its.")
    score: float = Field(
        description="Mean similarity of the query blocks paired one-to-one with one stored capture of it."
    )
    inliers: int | None = Field(
        default=None,
        description="Local-feature matches consistent with one homography, summed over the paired blocks "
        "(null: not checked geometrically).",
    )
    confirmed_blocks: int | None = Field(
        default=None, description="Paired blocks with enough inliers on their own (null: not checked)."
    )


class Verification(BaseModel):
    """The geometric check behind the decision: which band it fell into and the evidence."""

    band: Literal["matched", "review", "new"] = Field(
        description="matched: clearly a known pallet; review: registered as new but uncertain (see "
        "`review`); new: clearly never seen."
    )
    inliers: int | None = Field(description="Summed inliers of the strongest checked candidate.")
    confirmed_blocks: int | None = Field(description="Its paired blocks with enough inliers on their own.")
    runner_up_inliers: int | None = Field(
        description="Summed inliers of the second checked candidate (an impostor: the service watches "
        "these, see GET /v1/calibration)."
    )
    candidates_checked: int = Field(description="Candidates whose blocks were matched geometrically.")


class MatchResult(BaseModel):
    """Outcome of a receipt or dispatch: which pallet it was and how sure the vote was."""

    event_id: int
    kind: EventKind
    decision: MatchDecision = Field(description="matched: a known pallet; registered: a new pallet.")
    review: bool = Field(
        default=False,
        description="Registered as a new pallet, but one of the candidates may be the same pallet: a person "
        "should compare them (the pallet can be merged later).",
    )
    pallet_id: uuid.UUID
    score: float | None = Field(
        description="Verified score of the decided (or, when registered, the best rejected) pallet: mean "
        "similarity of the blocks paired one-to-one with its stored capture; null when given by pallet_id."
    )
    votes: int
    blocks_compared: int
    verification: Verification | None = Field(
        default=None, description="The geometric check (null when the pallet was given by pallet_id)."
    )
    blocks: list[BlockMatch]
    candidates: list[CandidateMatch]
    model: str = Field(description="Id of the model that made the fingerprints.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "event_id": 42,
                    "kind": "dispatch",
                    "decision": "matched",
                    "review": False,
                    "pallet_id": _PALLET,
                    "score": 0.91,
                    "votes": 6,
                    "blocks_compared": 6,
                    "verification": {
                        "band": "matched",
                        "inliers": 1240,
                        "confirmed_blocks": 6,
                        "runner_up_inliers": 21,
                        "candidates_checked": 2,
                    },
                    "blocks": [{"position": i, "pallet_id": _PALLET, "similarity": 0.93} for i in range(6)],
                    "candidates": [
                        {
                            "pallet_id": _PALLET,
                            "votes": 6,
                            "score": 0.91,
                            "inliers": 1240,
                            "confirmed_blocks": 6,
                        },
                        {
                            "pallet_id": _OTHER,
                            "votes": 0,
                            "score": 0.42,
                            "inliers": 21,
                            "confirmed_blocks": 0,
                        },
                    ],
                    "model": "pcb_resnet18-p4x128-0123456789ab",
                }
            ]
        }
    }
