"""Calibrated decision parameters of a model: read and written as JSON.

``palletreid evaluate --calibrate`` writes them; the service reads them at start.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.runtime.voting import VotingThresholds

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS_FILE: Path = (
    Path(__file__).resolve().parent.parent / "checkpoints" / "voting_thresholds.json"
)
"""Thresholds shipped with the default checkpoint, written by ``palletreid evaluate --calibrate``."""


def write_thresholds(path: Path, thresholds: VotingThresholds, **provenance: Any) -> Path:
    """Store thresholds as JSON (the three rule thresholds at top level, plus free-form provenance)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**asdict(thresholds), **provenance}, indent=2, sort_keys=True) + "\n")
    logger.info("wrote thresholds to %s", path)
    return path


def read_thresholds(path: Path) -> VotingThresholds:
    """Thresholds from a JSON file holding ``block_threshold``, ``min_votes`` and ``score_threshold``.

    Accepts a file written by :func:`write_thresholds` or an evaluation ``report.json`` (its pallet section).
    """
    data = json.loads(Path(path).read_text())
    if "pallet" in data and isinstance(data["pallet"], dict):
        data = data["pallet"].get("thresholds", {})
    try:
        return VotingThresholds(
            block_threshold=float(data["block_threshold"]),
            min_votes=int(data["min_votes"]),
            score_threshold=float(data["score_threshold"]),
        )
    except KeyError as error:
        raise ValueError(f"{path} has no {error.args[0]!r}; expected a thresholds JSON file") from error
