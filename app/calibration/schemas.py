"""``GET /v1/calibration``: how the live impostor evidence sits against the decision thresholds."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class HistogramBin(BaseModel):
    lower: int = Field(description="Inclusive lower bound (summed inliers).")
    upper: int | None = Field(description="Exclusive upper bound; null for the last, open-ended bin.")
    count: int


class EvidenceSummary(BaseModel):
    """Summed inliers of one kind of sample."""

    count: int
    max: int | None
    median: float | None
    p99: float | None = Field(description="Null with fewer than 100 samples.")
    p999: float | None = Field(description="Null with fewer than 1,000 samples.")
    histogram: list[HistogramBin]


class GeometryThresholds(BaseModel):
    """The geometric bands in force (see docs/api.md, "Decision bands")."""

    match_inliers: int
    match_blocks: int
    block_inliers: int
    min_margin: int
    review_inliers: int


class FalseMatchEstimate(BaseModel):
    """Share of impostors that reach ``match_inliers``: the rate at which an unknown pallet would be merged
    if nothing else (confirmed blocks, margin) stopped it, so an upper estimate of the false-match rate."""

    observed: float | None = Field(description="Share of the impostor samples at or above match_inliers.")
    upper_bound_95: float | None = Field(description="One-sided 95 % upper confidence bound of that share.")
    tail_model: float | None = Field(
        description="Exponential tail fitted above the impostors' 90th percentile, evaluated at "
        "match_inliers (null with fewer than 50 samples)."
    )
    target: float = Field(description="The rate the operator aims for (PALLETREID_CALIBRATION_TARGET_RATE).")


class SuggestedThresholds(BaseModel):
    """What `palletreid calibrate` would write for the target rate (apply it by hand, after a look)."""

    match_inliers: int
    review_inliers: int
    genuine_accepted: float | None = Field(
        description="Share of recorded matches that would still clear match_inliers (only decisions that "
        "were matches are recorded as genuine, so this can only fall)."
    )


class CalibrationReport(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "resnet18-p4x128-14ed7510c52c",
                    "events": 1840,
                    "reviews": 12,
                    "corrected": 31,
                    "thresholds": {
                        "match_inliers": 130,
                        "match_blocks": 2,
                        "block_inliers": 25,
                        "min_margin": 50,
                        "review_inliers": 80,
                    },
                    "impostor": {
                        "count": 3120,
                        "max": 71,
                        "median": 9.0,
                        "p99": 38.0,
                        "p999": 60.5,
                        "histogram": [
                            {"lower": 0, "upper": 10, "count": 1702},
                            {"lower": 10, "upper": 20, "count": 1010},
                            {"lower": 20, "upper": None, "count": 408},
                        ],
                    },
                    "genuine": {
                        "count": 1210,
                        "max": 2710,
                        "median": 820.0,
                        "p99": 2380.0,
                        "p999": None,
                        "histogram": [{"lower": 0, "upper": None, "count": 1210}],
                    },
                    "false_match": {
                        "observed": 0.0,
                        "upper_bound_95": 0.00096,
                        "tail_model": 2.1e-6,
                        "target": 0.001,
                    },
                    "suggested": {"match_inliers": 84, "review_inliers": 62, "genuine_accepted": 1.0},
                    "warnings": [],
                }
            ]
        }
    )

    model: str = Field(description="The model whose decisions are summarised (the one in force).")
    events: int = Field(description="Recent events with geometric evidence that were considered.")
    reviews: int = Field(description="Of those, flagged for review and still open (in neither sample).")
    corrected: int = Field(
        description="Of those, labelled by a person rather than by the decision: resolved reviews, and "
        "events a merge or detach changed the pallet of (a confirmed duplicate is genuine, a detached match "
        "an impostor)."
    )
    thresholds: GeometryThresholds
    impostor: EvidenceSummary = Field(
        description="Runner-up candidates of every decision, the best candidate of queries decided new, and "
        "the best candidate of a match a person detached (a false match)."
    )
    genuine: EvidenceSummary = Field(
        description="The matched pallet's evidence of every match, and what a person confirmed below the "
        "match threshold (a review resolved by a merge, a duplicate merged)."
    )
    false_match: FalseMatchEstimate
    suggested: SuggestedThresholds | None = Field(
        description="Thresholds for the target rate; null with fewer than 50 impostor samples."
    )
    warnings: list[str] = Field(description="What needs an operator's attention, in words.")
