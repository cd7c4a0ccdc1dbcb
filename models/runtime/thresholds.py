"""A model's calibrated decision parameters: the rule's thresholds and the settings they were chosen under.

``palletreid evaluate --calibrate`` chooses them for one model; they travel inside that model's checkpoint
(:mod:`models.runtime.checkpoint`) and can also be written to / read from a JSON file. They name the model
they belong to: thresholds calibrated for one network mean nothing for another.

Extending: add a field with a default to :class:`RuleSettings` or :class:`VotingThresholds`, or a new nested
dataclass section with defaults to :class:`DecisionParameters`; (de)serialisation follows the dataclass
fields, older files read with the defaults, and keys this code does not know are refused rather than ignored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from models.runtime.voting import (
    DEFAULT_CAPTURES_PER_PALLET,
    DEFAULT_SHORTLIST_SIZE,
    DEFAULT_TOP_K,
    FINGERPRINT_NORMALISATION,
    GeometryParameters,
    VotingThresholds,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Version 1 files held the thresholds and ``model_id`` / ``top_k`` / ``shortlist_size`` at top level."""


@dataclass(frozen=True)
class RuleSettings:
    """Settings of the decision rule besides its thresholds; thresholds are only valid under these."""

    top_k: int = DEFAULT_TOP_K
    """Nearest stored blocks looked up per query block."""
    shortlist_size: int = DEFAULT_SHORTLIST_SIZE
    """Pallets verified per query by one-to-one block pairing."""
    captures_per_pallet: int = DEFAULT_CAPTURES_PER_PALLET
    """Most recent stored captures verified per shortlisted pallet."""
    fingerprint_normalisation: str = FINGERPRINT_NORMALISATION
    """How fingerprints are normalised before cosine similarities are taken."""

    def __post_init__(self) -> None:
        if min(self.top_k, self.shortlist_size, self.captures_per_pallet) < 1:
            raise ValueError("top_k, shortlist_size and captures_per_pallet must be at least 1")


@dataclass(frozen=True)
class DecisionParameters:
    """Everything the decision rule needs for one model, and where the values came from."""

    model_id: str
    thresholds: VotingThresholds
    rule: RuleSettings = field(default_factory=RuleSettings)
    geometry: GeometryParameters = field(default_factory=GeometryParameters)
    """The geometric stage (local features, inlier bands) that decides between matched, review and new."""
    calibration: Mapping[str, Any] = field(default_factory=dict)
    """Free-form provenance: dataset, calibration target, figures reached on the calibration data."""

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **_to_plain(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecisionParameters:
        """Parse :meth:`to_dict`'s output (or a version 1 file); ``ValueError`` says what is wrong."""
        values = dict(data)
        version = values.pop("format", 1)
        if version == 1:
            values = _upgrade_version_1(values)
        elif version != FORMAT_VERSION:
            raise ValueError(f"decision parameters format {version!r} is not supported (expected 2)")
        return _from_plain(cls, values, "decision parameters")

    def describe(self) -> str:
        """One line for logs."""
        t, r, g = self.thresholds, self.rule, self.geometry
        return (
            f"block {t.block_threshold:.3f}, votes {t.min_votes}, score {t.score_threshold:.3f}, "
            f"top-k {r.top_k}, {r.shortlist_size} verified, {r.captures_per_pallet} captures per pallet; "
            f"geometry: {g.candidates_checked} candidates checked, matched >= {g.match_inliers} inliers "
            f"({g.match_blocks} blocks >= {g.block_inliers}, margin {g.min_margin}), "
            f"review >= {g.review_inliers}, {g.side_view_extractor.max_features} ORB corners for blocks "
            f"cut out of side views, block images against them at "
            f"{f'{g.side_scale_width} px faces' if g.side_scale_width else 'their own scale'}; "
            f"visual words: {g.word_candidates_checked} more checked of "
            f"{g.word_shortlist_size} (top-k {g.word_top_k})"
        )


def write_decision_parameters(path: Path, parameters: DecisionParameters) -> Path:
    """Store decision parameters as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(parameters.to_dict(), indent=2, sort_keys=True) + "\n")
    logger.info("wrote decision parameters to %s", path)
    return path


def read_decision_parameters(path: Path) -> DecisionParameters:
    """Decision parameters from a JSON file written by :func:`write_decision_parameters`."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    try:
        return DecisionParameters.from_dict(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def read_thresholds(path: Path) -> VotingThresholds:
    """Only the thresholds, from a decision-parameters file or an evaluation ``report.json``."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and isinstance(data.get("pallet"), dict):
        try:
            return _from_plain(VotingThresholds, data["pallet"].get("thresholds", {}), "thresholds")
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error
    return read_decision_parameters(path).thresholds


def _upgrade_version_1(values: dict[str, Any]) -> dict[str, Any]:
    """The flat version 1 layout (thresholds, rule settings and provenance side by side) as version 2."""
    threshold_keys = {item.name for item in dataclasses.fields(VotingThresholds)}
    rule_keys = {item.name for item in dataclasses.fields(RuleSettings)}
    return {
        "model_id": values.pop("model_id", None),
        "thresholds": {key: values.pop(key) for key in threshold_keys if key in values},
        "rule": {key: values.pop(key) for key in rule_keys if key in values},
        "calibration": values,
    }


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: _to_plain(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _to_plain(item) for key, item in value.items()}
    return value


Section = TypeVar("Section")


def _from_plain(cls: type[Section], data: Any, where: str) -> Section:
    """Build dataclass ``cls`` from parsed JSON, type-checking scalars and recursing into nested sections."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a JSON object, got {data!r}")
    hints = get_type_hints(cls)
    known = {item.name: item for item in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for name, item in known.items():
        if name not in data:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where} lacks {name!r}")
            continue
        values[name] = _coerce(hints[name], data[name], f"{where}.{name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error


def _coerce(expected: Any, value: Any, where: str) -> Any:
    if get_origin(expected) in (Union, types.UnionType):
        expected = next(arg for arg in get_args(expected) if arg is not type(None))
    if dataclasses.is_dataclass(expected) and isinstance(expected, type):
        return _from_plain(expected, value, where)
    if get_origin(expected) is not None and issubclass(get_origin(expected), Mapping):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a JSON object")
        return dict(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected in (int, float) and isinstance(value, bool)):
        raise ValueError(f"{where} must be {expected.__name__}, got {value!r}")
    return value
