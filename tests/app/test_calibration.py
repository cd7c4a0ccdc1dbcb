"""The service watching its own evidence: impostor statistics, GET /v1/calibration, palletreid calibrate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from api_testkit import FreshDatabase, block_analysis
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from app.calibration.service import CalibrationService
from app.calibration.statistics import ExponentialTail, histogram, observed_rate
from app.cli import main
from app.db.migrations import upgrade_to_head
from app.db.session import build_session_factory, unit_of_work
from app.db.tables import EventKind
from app.matching.service import EventDetails, MatchingConfig, MatchingService
from models.runtime.checkpoint import read_metadata
from models.runtime.thresholds import read_decision_parameters
from models.runtime.voting import GeometryParameters, VotingThresholds

CONFIG = MatchingConfig(
    thresholds=VotingThresholds(block_threshold=0.8, min_votes=2, score_threshold=0.3),
    top_k=10,
    shortlist_size=10,
    captures_per_pallet=3,
    ef_search=40,
    words_ef_search=40,
    max_candidates=5,
)


def record_traffic(factory: Callable[[], Session], model_id: str, *, strangers: int) -> None:
    """Three pallets received, ``strangers`` unknown pallets dispatched, then one known pallet dispatched."""
    for seed in range(100, 103):
        with unit_of_work(factory) as session:
            MatchingService(session, CONFIG).record(
                EventKind.RECEIPT, block_analysis(seed), model_id=model_id, details=EventDetails()
            )
    for seed in range(200, 200 + strangers):
        with unit_of_work(factory) as session:
            MatchingService(session, CONFIG).record(
                EventKind.DISPATCH, block_analysis(seed), model_id=model_id, details=EventDetails()
            )
    with unit_of_work(factory) as session:
        MatchingService(session, CONFIG).record(
            EventKind.DISPATCH, block_analysis(100), model_id=model_id, details=EventDetails()
        )


def test_exponential_tail_recovers_the_rate_of_exponential_samples() -> None:
    samples = np.random.default_rng(0).exponential(10.0, 20_000)
    tail = ExponentialTail.fit(samples)
    assert tail is not None
    # P(X >= t) = exp(-t / 10): 1e-3 at t = 69.1
    assert tail.threshold_for(1e-3) == pytest.approx(69.1, abs=3)
    assert tail.rate_at(46.05) == pytest.approx(1e-2, rel=0.15)
    assert ExponentialTail.fit(samples[:49]) is None


def test_observed_rate_bounds_a_clean_sample_by_the_rule_of_three() -> None:
    observed, upper = observed_rate(np.zeros(1000), 1)
    assert observed == 0.0
    assert upper == pytest.approx(3 / 1000, rel=0.01)
    observed, upper = observed_rate(np.array([0] * 90 + [5] * 10), 5)
    assert observed == 0.1 and upper is not None and 0.15 < upper < 0.18
    assert observed_rate(np.array([]), 5) == (None, None)


def test_histogram_bins_every_sample_once() -> None:
    bins = histogram(np.array([0, 9, 10, 25, 30, 400]), upper=30)
    assert bins == [(0, 10, 2), (10, 20, 1), (20, 30, 1), (30, None, 2)]


def test_calibration_reports_the_live_impostor_evidence(
    client: TestClient, session_factory: Callable[[], Session]
) -> None:
    model_id = client.get("/readyz").json()["model"]
    empty = client.get("/v1/calibration").json()
    assert (empty["events"], empty["impostor"]["count"], empty["suggested"]) == (0, 0, None)
    assert any("too few" in warning for warning in empty["warnings"])

    record_traffic(session_factory, model_id, strangers=55)
    response = client.get("/v1/calibration")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["model"] == model_id
    assert report["thresholds"]["match_inliers"] == GeometryParameters().match_inliers
    # 55 strangers and one known pallet: best and runner-up of each stranger, runner-up of the known one
    assert report["events"] == 56
    assert report["impostor"]["count"] == 55 * 2 + 1
    assert report["impostor"]["max"] < GeometryParameters().review_inliers
    assert report["genuine"]["count"] == 1 and report["genuine"]["max"] > 6 * 400
    assert sum(b["count"] for b in report["impostor"]["histogram"]) == report["impostor"]["count"]
    assert report["false_match"]["observed"] == 0.0
    assert report["false_match"]["upper_bound_95"] == pytest.approx(3 / 111, rel=0.05)
    assert report["false_match"]["tail_model"] < 1e-6
    assert report["suggested"]["match_inliers"] >= 2 * GeometryParameters().block_inliers
    assert report["suggested"]["genuine_accepted"] == 1.0
    assert report["warnings"] == []


def test_an_impostor_tail_reaching_the_match_threshold_is_a_warning(
    client: TestClient, session_factory: Callable[[], Session], session: Session
) -> None:
    model_id = client.get("/readyz").json()["model"]
    record_traffic(session_factory, model_id, strangers=50)
    loose = GeometryParameters(
        block_inliers=1, match_blocks=1, match_inliers=2, min_margin=0, review_inliers=1
    )
    report = CalibrationService(session).report(
        model_id, loose, target_rate=1e-3, review_rate=1e-2, window=1000
    )
    assert any("reaches the match threshold" in warning for warning in report.warnings)
    assert any("exceeds the target" in warning for warning in report.warnings)


def test_calibrate_writes_thresholds_for_the_operator(
    fresh_database: FreshDatabase, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fresh_database() as url:
        upgrade_to_head(url)
        for name, value in {
            "DATABASE_URL": url,
            "PALLETREID_MODEL_PATH": str(tiny_checkpoint),
            "PALLETREID_BLOCK_THRESHOLD": "0.995",
            "PALLETREID_MIN_VOTES": "3",
            "PALLETREID_SCORE_THRESHOLD": "0.995",
        }.items():
            monkeypatch.setenv(name, value)
        out = tmp_path / "thresholds.json"
        assert main(["calibrate", "--out", str(out)]) == 2, "no decisions recorded yet"
        assert not out.exists()

        engine = create_engine(url)
        model = read_metadata(tiny_checkpoint).model_id
        record_traffic(build_session_factory(engine), model, strangers=30)
        engine.dispose()
        assert main(["calibrate", "--out", str(out), "--target-rate", "0.0001", "--review-rate", "0.01"]) == 0

    written = read_decision_parameters(out)
    assert written.model_id == model
    assert written.geometry.match_inliers >= 2 * written.geometry.block_inliers
    assert written.geometry.review_inliers <= written.geometry.match_inliers
    assert written.calibration["geometry_impostor_samples"] == 30 * 2 + 1
    assert written.calibration["geometry_target_false_match_rate"] == 0.0001
