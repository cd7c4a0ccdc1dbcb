"""``palletreid calibrate``: thresholds for a target false-match rate from the recorded evidence."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="recompute the geometric thresholds from the decisions this deployment recorded",
        description=(
            "Read the inlier evidence recorded with the latest decisions of the model in force (the "
            "runner-up of every decision and the best candidate of queries decided new are impostors), "
            "fit the impostor tail and write decision parameters whose match threshold meets the target "
            "false-match rate and whose review band flags about --review-rate of unknown pallets. "
            "Nothing changes until an operator points PALLETREID_THRESHOLDS_FILE at the written file and "
            "restarts the service. Uses DATABASE_URL when set, else the embedded PostgreSQL in --data-dir."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="decision parameters (JSON) to write")
    parser.add_argument(
        "--target-rate",
        type=float,
        default=None,
        help="false-match rate to aim for (default: PALLETREID_CALIBRATION_TARGET_RATE, 0.001)",
    )
    parser.add_argument(
        "--review-rate",
        type=float,
        default=None,
        help="share of unknown pallets the review band may flag "
        "(default: PALLETREID_CALIBRATION_REVIEW_RATE, 0.01)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="most recent events to use (default: PALLETREID_CALIBRATION_WINDOW)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded PostgreSQL data directory when no DATABASE_URL is set (default: ./var)",
    )
    parser.set_defaults(handler=calibrate)


def calibrate(args: argparse.Namespace) -> int:
    from app.calibration.service import CalibrationService, suggested_geometry
    from app.db.embedded import embedded_postgres
    from app.db.session import build_engine, build_session_factory
    from app.errors import ConfigurationError
    from app.main import model_path
    from app.matching.parameters import decision_parameters_in_force
    from app.settings import Settings
    from models.runtime.checkpoint import CheckpointError, read_metadata
    from models.runtime.thresholds import write_decision_parameters

    settings = Settings()
    if args.data_dir is not None:
        settings = settings.model_copy(update={"data_dir": args.data_dir})
    target = args.target_rate if args.target_rate is not None else settings.calibration_target_rate
    review = args.review_rate if args.review_rate is not None else settings.calibration_review_rate
    window = args.window if args.window is not None else settings.calibration_window
    if not 0 < target <= review < 1:
        logger.error("need 0 < --target-rate <= --review-rate < 1, got %g and %g", target, review)
        return 2
    path = model_path(settings)
    try:
        in_force = decision_parameters_in_force(settings, read_metadata(path), path)
    except (CheckpointError, ConfigurationError) as error:
        logger.error("%s", error)
        return 2
    parameters = in_force.parameters
    with ExitStack() as stack:
        url = settings.database_url or stack.enter_context(embedded_postgres(settings.data_dir))
        engine = build_engine(url, pool_size=1)
        stack.callback(engine.dispose)
        with build_session_factory(engine)() as session:
            evidence = CalibrationService(session).evidence(parameters.model_id, window=window)
    geometry = suggested_geometry(parameters.geometry, evidence, target_rate=target, review_rate=review)
    if geometry is None:
        logger.error(
            "only %d impostor samples recorded for model %s (in %d events): too few to calibrate; "
            "let the service decide more pallets first",
            len(evidence.impostor),
            parameters.model_id,
            evidence.events,
        )
        return 2
    calibrated = dataclasses.replace(
        parameters,
        geometry=geometry,
        calibration={
            **parameters.calibration,
            "geometry_calibrated_by": "palletreid calibrate",
            "geometry_calibrated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "geometry_target_false_match_rate": target,
            "geometry_review_rate": review,
            "geometry_events": evidence.events,
            "geometry_impostor_samples": len(evidence.impostor),
            "geometry_genuine_samples": len(evidence.genuine),
            "geometry_corrected_events": evidence.corrected,
            "geometry_calibrated_from": in_force.source,
        },
    )
    write_decision_parameters(args.out, calibrated)
    logger.info(
        "model %s, %d events (%d impostor, %d genuine samples, max impostor %d): match_inliers %d -> %d, "
        "review_inliers %d -> %d; apply with PALLETREID_THRESHOLDS_FILE=%s",
        parameters.model_id,
        evidence.events,
        len(evidence.impostor),
        len(evidence.genuine),
        int(evidence.impostor.max()),
        parameters.geometry.match_inliers,
        geometry.match_inliers,
        parameters.geometry.review_inliers,
        geometry.review_inliers,
        args.out,
    )
    return 0
