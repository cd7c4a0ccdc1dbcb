"""Probe responses."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Liveness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str


class Readiness(BaseModel):
    """Returned only when every check passed (otherwise a 503 error names the failed checks)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "model": "pcb_resnet18-p4x128-0123456789ab",
                    "embedding_dim": 512,
                    "schema_revision": ["0001"],
                }
            ]
        }
    )

    status: str
    model: str
    embedding_dim: int
    schema_revision: list[str]
