"""The decision parameters in force: the model's calibrated ones, checked against the loaded model, with any
environment overrides applied and reported.

Sources, first found wins: a separate file the operator names (``PALLETREID_THRESHOLDS_FILE``; it must name
the loaded model's id), the parameters stored in the checkpoint, or (for an uncalibrated model) all three
thresholds from the environment. ``PALLETREID_BLOCK_THRESHOLD`` / ``_MIN_VOTES`` / ``_SCORE_THRESHOLD`` /
``_TOP_K`` / ``_SHORTLIST_SIZE`` / ``_CAPTURES_PER_PALLET`` override single values; every override is logged
and listed by ``/readyz``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from app.errors import ConfigurationError
from app.settings import Settings
from models.runtime.checkpoint import CheckpointMetadata
from models.runtime.thresholds import DecisionParameters, read_decision_parameters
from models.runtime.voting import FINGERPRINT_NORMALISATION, VotingThresholds

logger = logging.getLogger(__name__)

_THRESHOLD_FIELDS = tuple(item.name for item in dataclasses.fields(VotingThresholds))
_RULE_OVERRIDES = ("top_k", "shortlist_size", "captures_per_pallet")


@dataclass(frozen=True)
class DecisionParametersInForce:
    parameters: DecisionParameters
    """The values the service decides with (overrides applied)."""
    source: str
    """Where the calibrated values came from: ``checkpoint <path>``, ``file <path>`` or ``environment``."""
    overridden: tuple[str, ...]
    """Environment variables that replaced a calibrated value."""


def _env_name(setting: str) -> str:
    return f"PALLETREID_{setting.upper()}"


def _calibrated(
    settings: Settings, model: CheckpointMetadata, model_path: Path
) -> tuple[DecisionParameters | None, str]:
    if settings.thresholds_file is not None:
        path = settings.thresholds_file
        try:
            parameters = read_decision_parameters(path)
        except (OSError, ValueError) as error:
            raise ConfigurationError(
                f"cannot read the decision parameters from {path} ({error}); PALLETREID_THRESHOLDS_FILE must "
                "name a thresholds.json written by `palletreid evaluate --calibrate` for this model"
            ) from error
        if parameters.model_id != model.model_id:
            raise ConfigurationError(
                f"{path} holds decision parameters calibrated for model {parameters.model_id}, but the "
                f"loaded model is {model.model_id}; calibrate this model (`palletreid evaluate --calibrate`) "
                "or unset PALLETREID_THRESHOLDS_FILE to use the parameters stored in its checkpoint"
            )
        return parameters, f"file {path}"
    if model.decision is not None:
        return model.decision, f"checkpoint {model_path}"
    return None, "environment"


def decision_parameters_in_force(
    settings: Settings, model: CheckpointMetadata, model_path: Path
) -> DecisionParametersInForce:
    """The parameters to decide with, or ``ConfigurationError`` saying how to fix the configuration."""
    calibrated, source = _calibrated(settings, model, model_path)
    threshold_overrides = {
        name: getattr(settings, name) for name in _THRESHOLD_FIELDS if getattr(settings, name) is not None
    }
    rule_overrides = {
        name: getattr(settings, name) for name in _RULE_OVERRIDES if getattr(settings, name) is not None
    }
    if calibrated is None:
        missing = [_env_name(name) for name in _THRESHOLD_FIELDS if name not in threshold_overrides]
        if missing:
            raise ConfigurationError(
                f"model {model.model_id} ({model_path}) carries no calibrated decision parameters: store "
                "them with `palletreid evaluate --calibrate --store-in-checkpoint`, set "
                "PALLETREID_THRESHOLDS_FILE to a thresholds.json calibrated for it, or set "
                f"{', '.join(missing)}"
            )
        calibrated = DecisionParameters(
            model_id=model.model_id, thresholds=VotingThresholds(**threshold_overrides)
        )
        threshold_overrides = {}
    if calibrated.rule.fingerprint_normalisation != FINGERPRINT_NORMALISATION:
        raise ConfigurationError(
            f"the decision parameters ({source}) were calibrated on "
            f"{calibrated.rule.fingerprint_normalisation!r}-normalised fingerprints; "
            f"this service compares {FINGERPRINT_NORMALISATION!r}-normalised ones"
        )
    try:
        parameters = dataclasses.replace(
            calibrated,
            thresholds=dataclasses.replace(calibrated.thresholds, **threshold_overrides),
            rule=dataclasses.replace(calibrated.rule, **rule_overrides),
        )
    except ValueError as error:
        raise ConfigurationError(f"invalid decision parameter override: {error}") from error
    overridden = tuple(_env_name(name) for name in [*threshold_overrides, *rule_overrides])
    if overridden and source != "environment":
        logger.warning(
            "environment overrides the calibrated decision parameters of %s (%s): %s",
            model.model_id,
            source,
            ", ".join(
                f"{name}={getattr(settings, name)}" for name in [*threshold_overrides, *rule_overrides]
            ),
        )
    return DecisionParametersInForce(parameters=parameters, source=source, overridden=overridden)
