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
    "model": "resnet18-p4x128-3fa9a0af1518",
    "detections": [
        {
            "side": 0,
            "width": 1280,
            "height": 720,
            "blocks": [
                _detected(
                    [38.1, 359.9, 195.3, 456.1],
                    [[38.1, 378.4], [188.2, 359.9], [195.3, 434.2], [45.6, 456.1]],
                    0.9561,
                    0,
                ),
                _detected(
                    [547.2, 318.8, 673.7, 395.0],
                    [[547.2, 329.2], [671.7, 318.8], [673.7, 382.2], [551.2, 395.0]],
                    0.9654,
                    1,
                ),
                _detected(
                    [974.1, 282.5, 1075.9, 345.7],
                    [[974.1, 288.9], [1075.8, 282.5], [1075.9, 336.8], [976.4, 345.7]],
                    0.9275,
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
                    [34.0, 490.6, 212.7, 613.8],
                    [[34.0, 530.3], [204.3, 490.6], [212.7, 569.2], [46.9, 613.8]],
                    0.9548,
                    3,
                ),
                _detected(
                    [551.6, 399.2, 665.2, 481.8],
                    [[551.6, 423.3], [661.6, 399.2], [665.2, 457.1], [557.1, 481.8]],
                    0.7712,
                    4,
                ),
                _detected(
                    [884.5, 340.3, 961.4, 395.8],
                    [[884.5, 352.1], [961.4, 340.3], [961.2, 384.5], [885.9, 395.8]],
                    0.7163,
                    5,
                ),
            ],
        },
    ],
    "detector": "blockdet-mnv2-2d243e161b7b",
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
