"""Service configuration: one settings class, read from ``PALLETREID_*`` environment variables.

``DATABASE_URL`` is honoured without the prefix (the convention of container platforms); with neither set,
``palletreid serve`` starts an embedded PostgreSQL in ``data_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.runtime.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS

URI_PREFIX_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]*$"
"""An absolute URI (scheme, colon, no spaces): identifiers appended to it stay URIs."""

MAX_FORM_FIELDS = 32
"""Non-file fields a receipt/dispatch form may have: its 12 named fields with damage codes repeated."""
FORM_FIELD_BYTES_BUDGET = 16
"""Full-size form fields the request-body limit leaves room for (fields are short: codes, references)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PALLETREID_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PALLETREID_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL (postgresql+psycopg://...); unset means an embedded PostgreSQL.",
    )
    data_dir: Path = Field(default=Path("var"), description="Where the embedded PostgreSQL keeps its data.")
    db_pool_size: int = Field(default=5, ge=1)

    model_path: Path | None = Field(default=None, description="Checkpoint; unset means the shipped default.")
    model_device: str = "cpu"
    model_threads: int | None = Field(default=None, ge=1, description="torch threads for inference.")
    embed_batch_size: int = Field(default=32, ge=1)
    model_precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="Inference precision: bf16 where the CPU computes it natively (auto), or forced.",
    )
    max_queued_requests: int = Field(
        default=8,
        ge=1,
        description="Requests waiting for or in the model at once; more are refused (503 overloaded).",
    )
    detector_path: Path | None = Field(
        default=None,
        description="Block detector for side views (`sides`); unset means the shipped default.",
    )
    min_detected_blocks: int = Field(
        default=2,
        ge=1,
        le=3,
        description="Blocks the detector must find on every side view; fewer is 422 blocks_not_found.",
    )

    max_image_bytes: int = Field(
        default=DEFAULT_MAX_IMAGE_BYTES, ge=1, description="Per uploaded block image."
    )
    max_image_pixels: int = Field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        description="Decompression-bomb guard: 24 MP photos pass, small files declaring huge images do not.",
    )
    max_blocks: int = Field(default=12, ge=1)
    max_form_field_bytes: int = Field(
        default=64 * 1024, ge=1, description="Per non-file form field (the multipart parser's part limit)."
    )

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "API keys as a JSON list or comma-separated entries `role:secret` or `role:name:secret`; "
            "a secret of 64 hex digits is the SHA-256 of the key. Roles: station, reader, admin."
        ),
    )
    api_keys_file: Path | None = Field(
        default=None, description="File with one API key entry (same format) per line; # starts a comment."
    )

    # --- Decision parameters. They belong to the model: its checkpoint carries the values calibrated for it
    # by `palletreid evaluate --calibrate` (see app/matching/parameters.py). Each setting below, when set,
    # overrides one calibrated value; overrides are logged and shown by /readyz.
    thresholds_file: Path | None = Field(
        default=None,
        description="Decision parameters (JSON) to use instead of the checkpoint's; must name its model.",
    )
    block_threshold: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="Min similarity for a vote (unset: calibrated)."
    )
    min_votes: int | None = Field(
        default=None, ge=1, description="Block votes a pallet needs to be matched (unset: calibrated)."
    )
    score_threshold: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Min mean similarity of the one-to-one block pairing (unset: calibrated).",
    )
    top_k: int | None = Field(
        default=None, ge=1, le=1000, description="Nearest stored blocks per query block (unset: calibrated)."
    )
    shortlist_size: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Pallets verified per query by one-to-one block pairing (unset: calibrated).",
    )
    captures_per_pallet: int | None = Field(
        default=None,
        ge=1,
        le=50,
        description="Most recent stored captures verified per shortlisted pallet (unset: calibrated).",
    )
    hnsw_ef_search: int = Field(
        default=150,
        ge=1,
        le=1000,
        description="HNSW candidate list size (150: recall@10 0.996 at 10 000 pallets, docs/benchmarks.md).",
    )
    hnsw_words_ef_search: int = Field(
        default=300,
        ge=1,
        le=1000,
        description=(
            "HNSW candidate list size of the visual-word k-NN (300 on the lighter word index finds a block's "
            "own pallet as often as 150 did on the old one at 10 000 pallets; docs/benchmarks.md)."
        ),
    )
    max_candidates: int = Field(default=5, ge=1, description="Candidates reported per match result.")

    calibration_target_rate: float = Field(
        default=0.001,
        gt=0,
        lt=1,
        description="False-match rate the live calibration aims for (/v1/calibration, palletreid calibrate).",
    )
    calibration_review_rate: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Share of unknown pallets the suggested review band may flag.",
    )
    calibration_window: int = Field(
        default=100_000, ge=1, description="Most recent events the live calibration looks at."
    )

    image_store: Path | None = Field(
        default=None,
        description="Folder of the stored block images (content-addressed); unset means <data_dir>/images.",
    )
    review_session_secret: SecretStr | None = Field(
        default=None,
        description="Signs /review login cookies; set it for several workers (unset: random per process).",
    )
    allow_partial_coverage: bool = Field(
        default=False,
        description="Serve a model that lacks fingerprints of some known pallets (see palletreid reindex).",
    )
    image_retention_days: int | None = Field(
        default=None,
        ge=1,
        description="`palletreid gc` deletes block images of events older than this (fingerprints stay); "
        "unset keeps them.",
    )

    epc_base_uri: str = Field(
        default="urn:palletreid:pallet:",
        pattern=URI_PREFIX_PATTERN,
        description="EPCIS: a pallet without a GRAI is named <this><pallet id>.",
    )
    epcis_base_uri: str = Field(
        default="urn:palletreid:",
        pattern=URI_PREFIX_PATTERN,
        description="EPCIS: prefix of locations (loc:), business transactions (bt:) and event ids (event:).",
    )

    webhook_worker: bool = Field(default=True, description="Send webhook deliveries from this process.")
    webhook_max_attempts: int = Field(default=10, ge=1, le=100, description="Attempts before a dead letter.")
    webhook_backoff_seconds: float = Field(
        default=2.0, gt=0, description="First retry delay; doubles per attempt, with jitter."
    )
    webhook_backoff_max_seconds: float = Field(default=600.0, gt=0, description="Longest retry delay.")
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, description="Per delivery attempt.")
    webhook_poll_seconds: float = Field(default=1.0, gt=0, description="Worker pause when nothing is due.")
    word_index_poll_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "The word indexer writes the visual words of new blocks when this process commits some, and "
            "looks for others' (other API processes, a crash) at least this often."
        ),
    )

    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`palletreid serve` logs: text or JSON lines; both carry the request id.",
    )
    log_level: str | None = Field(
        default=None,
        pattern=r"(?i)^(debug|info|warning|error|critical)$",
        description="`palletreid serve` log level (unset: --log-level, INFO); debug also shows the embedded "
        "database's, Alembic's and uvicorn's internals.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value: object) -> object:
        """Accept a JSON list or a comma/newline-separated string (easier to write in an env file)."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [entry.strip() for entry in value.replace("\n", ",").split(",") if entry.strip()]

    @property
    def image_store_path(self) -> Path:
        """Where block images are stored: ``PALLETREID_IMAGE_STORE`` or ``<data_dir>/images``."""
        return self.image_store if self.image_store is not None else self.data_dir / "images"

    @property
    def max_request_bytes(self) -> int:
        """Largest acceptable request body: every allowed block at its size limit plus the form fields."""
        return self.max_blocks * self.max_image_bytes + FORM_FIELD_BYTES_BUDGET * self.max_form_field_bytes
