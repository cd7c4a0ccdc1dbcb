"""Probe responses."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Liveness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str


class GeometryOut(BaseModel):
    """The geometric stage: how many candidates are checked and the inlier bands (docs/api.md)."""

    candidates_checked: int
    captures_checked: int
    block_inliers: int
    match_inliers: int
    match_blocks: int
    min_margin: int
    review_inliers: int
    word_top_k: int
    word_shortlist_size: int
    word_candidates_checked: int
    review_when_network_matches: bool


class DecisionParametersOut(BaseModel):
    """The decision parameters in force, where the calibrated ones came from, what the environment changed."""

    model_id: str
    block_threshold: float
    min_votes: int
    score_threshold: float
    top_k: int
    shortlist_size: int
    captures_per_pallet: int
    fingerprint_normalisation: str
    geometry: GeometryOut
    source: str
    overridden: list[str]


class ModelCoverageOut(BaseModel):
    """How many known pallets (not merged) have fingerprints of one model."""

    model_id: str
    pallets: int
    share: float = Field(description="Of the known pallets; 1.0: the model can identify every one.")


class Readiness(BaseModel):
    """Returned only when every check passed (otherwise a 503 error names the failed checks)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "model": "pcb_resnet18-p4x128-0123456789ab",
                    "embedding_dim": 512,
                    "precision": "bf16",
                    "detector": "blockdet-mnv2-8a7a0fb15ff5",
                    "vocabulary": "words32768-e116f0e94412",
                    "schema_revision": ["0008"],
                    "decision_parameters": {
                        "model_id": "pcb_resnet18-p4x128-0123456789ab",
                        "block_threshold": 0.7,
                        "min_votes": 2,
                        "score_threshold": 0.64,
                        "top_k": 10,
                        "shortlist_size": 10,
                        "captures_per_pallet": 3,
                        "fingerprint_normalisation": "l2",
                        "geometry": {
                            "candidates_checked": 5,
                            "captures_checked": 1,
                            "block_inliers": 25,
                            "match_inliers": 130,
                            "match_blocks": 2,
                            "min_margin": 50,
                            "review_inliers": 80,
                            "word_top_k": 20,
                            "word_shortlist_size": 30,
                            "word_candidates_checked": 5,
                            "review_when_network_matches": False,
                        },
                        "source": "checkpoint /srv/models/pcb_resnet18.safetensors",
                        "overridden": [],
                    },
                }
            ]
        }
    )

    status: str
    model: str
    embedding_dim: int
    precision: str
    """What the model computes in: ``bf16`` on a CPU with native bf16 (``PALLETREID_MODEL_PRECISION``)."""
    detector: str | None = Field(
        default=None,
        description="Model id of the block detector that reads side views (PALLETREID_DETECTOR_PATH).",
    )
    vocabulary: str | None = Field(
        default=None,
        description="Id of the visual-word vocabulary in the checkpoint: block words are stored and searched "
        "for more candidates (null: the checkpoint carries none, no word search).",
    )
    schema_revision: list[str]
    decision_parameters: DecisionParametersOut
    model_coverage: list[ModelCoverageOut] = Field(
        default_factory=list,
        description="Per model with fingerprints: the share of pallets it covers (cached 60 s).",
    )
