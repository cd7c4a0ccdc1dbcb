"""The service watching its own scores: impostor evidence against the thresholds, and thresholds for a target.

Every decision records the summed inliers of the strongest checked candidate and of the runner-up. Under
"a pallet matches one pallet at most" the runner-up is always an impostor, and so is the strongest
candidate of a query decided new; those samples are the live impostor distribution of this deployment
(its cameras, light and wood), which no offline calibration can know. Operators' corrections (resolved
reviews, merges, detaches) relabel the decisions they concern (:mod:`app.calibration.repository`).
:mod:`app.calibration.statistics` turns the samples into a false-match estimate and suggested thresholds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sqlalchemy.orm import Session

from app.calibration.repository import CalibrationRepository, RecordedEvidence
from app.calibration.schemas import (
    CalibrationReport,
    EvidenceSummary,
    FalseMatchEstimate,
    GeometryThresholds,
    HistogramBin,
    SuggestedThresholds,
)
from app.calibration.statistics import (
    MIN_SAMPLES,
    ExponentialTail,
    histogram,
    observed_rate,
    quantile,
)
from models.runtime.voting import GeometryParameters


class CalibrationService:
    def __init__(self, session: Session) -> None:
        self._evidence = CalibrationRepository(session)

    def evidence(self, model_id: str, *, window: int) -> RecordedEvidence:
        return self._evidence.recorded_evidence(model_id, window=window)

    def report(
        self,
        model_id: str,
        geometry: GeometryParameters,
        *,
        target_rate: float,
        review_rate: float,
        window: int,
    ) -> CalibrationReport:
        """The impostor and genuine evidence of ``model_id``'s recent decisions against ``geometry``."""
        evidence = self.evidence(model_id, window=window)
        tail = ExponentialTail.fit(evidence.impostor)
        observed, upper = observed_rate(evidence.impostor, geometry.match_inliers)
        tail_rate = tail.rate_at(geometry.match_inliers) if tail is not None else None
        suggested = suggested_geometry(geometry, evidence, target_rate=target_rate, review_rate=review_rate)
        return CalibrationReport(
            model=model_id,
            events=evidence.events,
            reviews=evidence.reviews,
            corrected=evidence.corrected,
            thresholds=GeometryThresholds(
                match_inliers=geometry.match_inliers,
                match_blocks=geometry.match_blocks,
                block_inliers=geometry.block_inliers,
                min_margin=geometry.min_margin,
                review_inliers=geometry.review_inliers,
            ),
            impostor=_summary(evidence.impostor, upper=2 * geometry.match_inliers),
            genuine=_summary(evidence.genuine, upper=2 * geometry.match_inliers),
            false_match=FalseMatchEstimate(
                observed=observed, upper_bound_95=upper, tail_model=tail_rate, target=target_rate
            ),
            suggested=(
                SuggestedThresholds(
                    match_inliers=suggested.match_inliers,
                    review_inliers=suggested.review_inliers,
                    genuine_accepted=observed_rate(evidence.genuine, suggested.match_inliers)[0],
                )
                if suggested is not None
                else None
            ),
            warnings=_warnings(evidence, geometry, tail_rate, target_rate),
        )


def suggested_geometry(
    geometry: GeometryParameters, evidence: RecordedEvidence, *, target_rate: float, review_rate: float
) -> GeometryParameters | None:
    """``geometry`` with ``match_inliers`` / ``review_inliers`` set from the fitted impostor tail.

    ``match_inliers`` is where the tail falls to ``target_rate`` (never below what ``match_blocks``
    confirmed blocks hold anyway); ``review_inliers`` where it falls to ``review_rate``, so about that
    share of unknown pallets is flagged. ``None`` with too few impostor samples.
    """
    if not 0.0 < target_rate <= review_rate < 1.0:
        raise ValueError("need 0 < target rate <= review rate < 1")
    tail = ExponentialTail.fit(evidence.impostor)
    if tail is None:
        return None
    match_inliers = max(tail.threshold_for(target_rate), geometry.match_blocks * geometry.block_inliers)
    review_inliers = min(match_inliers, max(tail.threshold_for(review_rate), geometry.block_inliers))
    return dataclasses.replace(geometry, match_inliers=match_inliers, review_inliers=review_inliers)


def _summary(samples: np.ndarray, *, upper: int) -> EvidenceSummary:
    return EvidenceSummary(
        count=len(samples),
        max=int(samples.max()) if len(samples) else None,
        median=quantile(samples, 0.5, min_samples=1),
        p99=quantile(samples, 0.99, min_samples=100),
        p999=quantile(samples, 0.999, min_samples=1000),
        histogram=[
            HistogramBin(lower=lower, upper=bin_upper, count=count)
            for lower, bin_upper, count in histogram(samples, upper=upper)
        ],
    )


def _warnings(
    evidence: RecordedEvidence, geometry: GeometryParameters, tail_rate: float | None, target_rate: float
) -> list[str]:
    warnings = []
    count = len(evidence.impostor)
    if count < MIN_SAMPLES:
        warnings.append(
            f"only {count} impostor samples: too few to estimate the false-match rate ({MIN_SAMPLES} needed)"
        )
    reaching = int((evidence.impostor >= geometry.match_inliers).sum())
    if reaching:
        warnings.append(
            f"the impostor tail reaches the match threshold: {reaching} of {count} impostor samples have "
            f">= {geometry.match_inliers} inliers (max {int(evidence.impostor.max())}); check the cameras "
            "and run `palletreid calibrate`"
        )
    if tail_rate is not None and tail_rate > target_rate:
        warnings.append(
            f"estimated false-match rate {tail_rate:.2g} exceeds the target {target_rate:g}; "
            "`palletreid calibrate` suggests thresholds for it"
        )
    return warnings
