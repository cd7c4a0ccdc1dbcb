"""Operators' corrections feed the live calibration: a review resolved by a merge is a genuine sample below
the match bar, ``keep_new`` confirms impostors, a detached match is an impostor that cleared the bar, and a
pallet merged into the one a query was registered as makes that query's best candidate genuine."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from api_testkit import block_analysis, pick
from sqlalchemy.orm import Session

from app.calibration.repository import CalibrationRepository, RecordedEvidence
from app.calibration.service import CalibrationService
from app.db.session import unit_of_work
from app.db.tables import EventKind, ReviewAction
from app.matching.schemas import MatchResult
from app.matching.service import EventDetails, MatchingConfig, MatchingService
from app.model_runner import BlockAnalysis
from app.reviews.service import CorrectionService, ReviewService
from models.runtime.voting import GeometryParameters, VotingThresholds

MODEL = "model-calibration"
CONFIG = MatchingConfig(
    thresholds=VotingThresholds(block_threshold=0.8, min_votes=2, score_threshold=0.3),
    top_k=10,
    shortlist_size=10,
    captures_per_pallet=3,
    ef_search=40,
    words_ef_search=40,
    max_candidates=5,
)
Factory = Callable[[], Session]


def record(factory: Factory, kind: EventKind, blocks: BlockAnalysis) -> MatchResult:
    with unit_of_work(factory) as session:
        return MatchingService(session, CONFIG).record(kind, blocks, model_id=MODEL, details=EventDetails())


def evidence(factory: Factory) -> RecordedEvidence:
    with factory() as session:
        return CalibrationRepository(session).recorded_evidence(MODEL, window=1000)


def gained(before: RecordedEvidence, after: RecordedEvidence) -> tuple[Counter[int], Counter[int]]:
    """Samples added to (positive) or taken from (negative) the genuine and impostor samples."""

    def change(old: list[int], new: list[int]) -> Counter[int]:
        difference = Counter(new)
        difference.subtract(Counter(old))
        return Counter({value: count for value, count in difference.items() if count})

    return (
        change(before.genuine.tolist(), after.genuine.tolist()),
        change(before.impostor.tolist(), after.impostor.tolist()),
    )


def strongest(result: MatchResult) -> int:
    assert result.verification is not None and result.verification.inliers is not None, result
    return result.verification.inliers


def test_corrections_relabel_the_evidence(session_factory: Factory) -> None:
    known = {
        seed: record(session_factory, EventKind.RECEIPT, block_analysis(seed)) for seed in (300, 301, 302)
    }
    start = evidence(session_factory)
    assert (start.reviews, start.corrected) == (0, 0)

    # One block of a known pallet alone: registered new and flagged. While open it is in neither sample.
    single = record(session_factory, EventKind.DISPATCH, pick(block_analysis(300), [0]))
    assert single.decision == "registered" and single.review
    flagged = evidence(session_factory)
    assert (flagged.reviews, flagged.corrected) == (1, 0)
    runner_up = single.verification.runner_up_inliers if single.verification else None
    assert gained(start, flagged) == (Counter(), Counter([runner_up] if runner_up is not None else []))

    with unit_of_work(session_factory) as session:
        ReviewService(session).resolve(
            single.event_id, ReviewAction.MERGE, known[300].pallet_id, actor="lead"
        )
    merged = evidence(session_factory)
    assert (merged.reviews, merged.corrected) == (0, 1)
    assert gained(flagged, merged) == (Counter([strongest(single)]), Counter()), (
        "genuine, though the decision did not accept it"
    )

    # A match a person detaches was a false match: its evidence, above the bar, becomes an impostor.
    matched = record(session_factory, EventKind.DISPATCH, block_analysis(301))
    assert matched.decision == "matched" and matched.pallet_id == known[301].pallet_id
    before_detach = evidence(session_factory)
    with unit_of_work(session_factory) as session:
        CorrectionService(session).detach(matched.event_id, actor="lead")
    detached = evidence(session_factory)
    assert gained(before_detach, detached) == (
        Counter({strongest(matched): -1}),
        Counter([strongest(matched)]),
    )
    assert strongest(matched) >= GeometryParameters().match_inliers
    assert detached.corrected == 2

    # A stranger registered new; a person merges its best candidate into it: that candidate was genuine.
    stranger = record(session_factory, EventKind.DISPATCH, block_analysis(400))
    assert stranger.decision == "registered" and not stranger.review
    best = max((c for c in stranger.candidates if c.inliers is not None), key=lambda c: c.inliers or 0)
    assert best.inliers == strongest(stranger)
    before_merge = evidence(session_factory)
    with unit_of_work(session_factory) as session:
        CorrectionService(session).merge(best.pallet_id, stranger.pallet_id, actor="lead")
    relabelled = evidence(session_factory)
    assert gained(before_merge, relabelled) == (
        Counter([strongest(stranger)]),
        Counter({strongest(stranger): -1}),
    )

    # keep_new: the flagged query's best candidate was an impostor after all (its runner-up already was).
    other = record(session_factory, EventKind.DISPATCH, pick(block_analysis(302), [1]))
    assert other.review
    before_keep = evidence(session_factory)
    with unit_of_work(session_factory) as session:
        ReviewService(session).resolve(other.event_id, ReviewAction.KEEP_NEW, None, actor="lead")
    kept = evidence(session_factory)
    assert gained(before_keep, kept) == (Counter(), Counter([strongest(other)]))
    assert (kept.reviews, kept.events) == (0, before_keep.events)

    with session_factory() as session:
        report = CalibrationService(session).report(
            MODEL, GeometryParameters(), target_rate=1e-3, review_rate=1e-2, window=1000
        )
    assert report.corrected == kept.corrected and report.reviews == 0
    assert report.false_match.observed is not None and report.false_match.observed > 0, "the detached match"
    assert any("reaches the match threshold" in warning for warning in report.warnings)
