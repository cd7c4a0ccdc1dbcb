"""``GET /v1/calibration`` (admin): the live impostor evidence against the thresholds in force."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import EmbedderDep, MatchingConfigDep, SessionDep, SettingsDep, require_role
from app.calibration.schemas import CalibrationReport
from app.calibration.service import CalibrationService
from app.errors import (
    AuthenticationError,
    DatabaseUnavailableError,
    PermissionDeniedError,
    ServiceNotReadyError,
    error_responses,
)
from app.security import Role

router = APIRouter(
    prefix="/v1/calibration",
    tags=["calibration"],
    dependencies=[Depends(require_role(Role.ADMIN))],
    responses=error_responses(
        AuthenticationError, PermissionDeniedError, DatabaseUnavailableError, ServiceNotReadyError
    ),
)


@router.get("")
def get_calibration(
    session: SessionDep, settings: SettingsDep, config: MatchingConfigDep, model: EmbedderDep
) -> CalibrationReport:
    """How this deployment's impostor evidence sits against the decision thresholds: histograms, the
    estimated false-match rate, thresholds suggested for the target rate and warnings. The samples are the
    runner-up of every decision and the best candidate of queries decided new, over the latest
    ``PALLETREID_CALIBRATION_WINDOW`` events of the model in force."""
    return CalibrationService(session).report(
        model.model_id,
        config.geometry,
        target_rate=settings.calibration_target_rate,
        review_rate=settings.calibration_review_rate,
        window=settings.calibration_window,
    )
