"""Match result returned by ``POST /v1/receipts`` and ``POST /v1/dispatches``."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.db.tables import EventKind, MatchDecision

_PALLET = "3f2b8c1e-6d0a-4c8e-9b1f-2a7d5e4c9b10"
_OTHER = "8a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def _detected(
    box: list[float], quad: list[list[float]], confidence: float, position: int
) -> dict[str, object]:
    return {"box": box, "quad": quad, "confidence": confidence, "position": position}


_SIDE_VIEW_RECEIPT: dict[str, Any] = {
    # What the shipped models answered to the receipt of docs/samples/sides/pallet-s/side_{0,1}.jpg
    # (pallet id replaced), the first time the pallet was seen.
    "event_id": 1,
    "kind": "receipt",
    "decision": "registered",
    "review": False,
    "pallet_id": _PALLET,
    "score": None,
    "votes": 0,
    "blocks_compared": 6,
    "verification": {
        "band": "new",
        "inliers": None,
        "confirmed_blocks": None,
        "runner_up_inliers": None,
        "candidates_checked": 0,
    },
    "blocks": [{"position": i, "pallet_id": None, "similarity": None} for i in range(6)],
    "candidates": [],
    "model": "resnet18-p4x128-14ed7510c52c",
    "detections": [
        {
            "side": 0,
            "width": 1280,
            "height": 720,
            "blocks": [
                _detected(
                    [38.1, 365.0, 191.4, 450.3],
                    [[38.1, 381.1], [186.3, 365.0], [191.4, 433.4], [44.4, 450.3]],
                    0.9643,
                    0,
                ),
                _detected(
                    [547.5, 318.4, 673.8, 393.9],
                    [[547.5, 331.0], [670.5, 318.4], [673.8, 380.6], [551.7, 393.9]],
                    0.9891,
                    1,
                ),
                _detected(
                    [975.4, 279.6, 1075.5, 348.7],
                    [[975.5, 288.3], [1075.5, 279.6], [1075.1, 338.8], [975.4, 348.7]],
                    0.9859,
                    2,
                ),
            ],
        },
        {
            "side": 1,
            "width": 1280,
            "height": 720,
            "blocks": [
                _detected(
                    [35.2, 498.0, 216.5, 610.4],
                    [[35.2, 536.9], [204.2, 498.0], [216.5, 565.7], [54.8, 610.4]],
                    0.9703,
                    3,
                ),
                _detected(
                    [552.5, 399.6, 664.3, 481.3],
                    [[552.5, 423.7], [660.9, 399.6], [664.3, 455.3], [558.6, 481.3]],
                    0.8886,
                    4,
                ),
                _detected(
                    [886.2, 334.8, 960.1, 400.5],
                    [[886.2, 351.1], [959.6, 334.8], [960.1, 382.6], [886.6, 400.5]],
                    0.9395,
                    5,
                ),
            ],
        },
    ],
    "detector": "blockdet-mnv2-8a7a0fb15ff5",
}


class BlockMatch(BaseModel):
    """What one query block voted for."""

    position: int = Field(
        description="Index of the block in the upload (0-based); from side views, the `position` its "
        "detection became (see `detections`)."
    )
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


class DetectedBlock(BaseModel):
    """A block the detector found in a side view."""

    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="x0, y0, x1, y1 in pixels of the side image as uploaded (upright after its EXIF "
        "orientation), origin top left.",
    )
    quad: list[list[float]] = Field(
        min_length=4,
        max_length=4,
        description="The block face's corners [x, y]: top-left, top-right, bottom-right, bottom-left; the "
        "crop is this quad rectified (perspective-corrected) when it is convex and fills half its box, "
        "else the box.",
    )
    confidence: float = Field(ge=0, le=1, description="Detector confidence (peak of its centre heatmap).")
    position: int | None = Field(
        description="The block position its crop became (as in `blocks`); null: not used (a side shows "
        "three blocks, only the three most confident detections of a side are used)."
    )


class SideDetections(BaseModel):
    """What the detector found in one side view."""

    side: int = Field(description="Index of the side image in the upload (0-based).")
    width: int = Field(description="Width of the (upright) side image in pixels.")
    height: int = Field(description="Height of the (upright) side image in pixels.")
    blocks: list[DetectedBlock] = Field(description="Detected blocks, left to right.")


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
    detections: list[SideDetections] | None = Field(
        default=None,
        description="Side views only: per side image, the blocks found and the position each became "
        "(null for block uploads).",
    )
    detector: str | None = Field(
        default=None, description="Id of the block detector that read the side views (null for blocks)."
    )

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
                },
                _SIDE_VIEW_RECEIPT,
            ]
        }
    }
