"""Threshold calibration: sweep the decision rule's thresholds over a grid and choose the operating point.

The chosen thresholds keep unknown pallets from being matched (also against a one-pallet gallery, as in a new
deployment) and identify as many known pallets as possible.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.evaluation.open_set import OpenSetFigures, QueryNeighbours, all_candidates, outcome_figures
from models.runtime.voting import Decision, VotingThresholds

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

DEFAULT_BLOCK_THRESHOLDS: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_MIN_VOTES: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
DEFAULT_SCORE_THRESHOLDS: tuple[float, ...] = tuple(round(i / 200, 3) for i in range(201))
DEFAULT_MAX_UNKNOWN_MATCH_RATE = 0.005


@dataclass(frozen=True)
class ThresholdSweep:
    """Open-set figures over a threshold grid; array axes: (block_threshold, min_votes, score_threshold)."""

    block_thresholds: tuple[float, ...]
    min_votes: tuple[int, ...]
    score_thresholds: tuple[float, ...]
    identification_rate: FloatArray
    false_reject_rate: FloatArray
    misidentification_rate: FloatArray
    unknown_registered_rate: FloatArray
    unknown_false_match_rate: FloatArray
    num_known: int
    num_unknown: int

    def curve(self, block_threshold: float, min_votes: int) -> list[tuple[float, OpenSetFigures]]:
        """Figures along the score-threshold axis at fixed ``block_threshold`` and ``min_votes``."""
        b = self.block_thresholds.index(block_threshold)
        m = self.min_votes.index(min_votes)
        return [(t, self.figures_at(b, m, s)) for s, t in enumerate(self.score_thresholds)]

    def figures_at(self, b: int, m: int, s: int) -> OpenSetFigures:
        return OpenSetFigures(
            identification_rate=float(self.identification_rate[b, m, s]),
            false_reject_rate=float(self.false_reject_rate[b, m, s]),
            misidentification_rate=float(self.misidentification_rate[b, m, s]),
            unknown_registered_rate=float(self.unknown_registered_rate[b, m, s]),
            unknown_false_match_rate=float(self.unknown_false_match_rate[b, m, s]),
            num_known=self.num_known,
            num_unknown=self.num_unknown,
        )


def sweep_thresholds(
    queries: Sequence[QueryNeighbours],
    *,
    block_thresholds: Sequence[float] = DEFAULT_BLOCK_THRESHOLDS,
    min_votes: Sequence[int] = DEFAULT_MIN_VOTES,
    score_thresholds: Sequence[float] = DEFAULT_SCORE_THRESHOLDS,
) -> ThresholdSweep:
    """Open-set figures for every combination of thresholds.

    Votes depend only on ``block_threshold``, so :func:`decide` runs once per query and block threshold with
    the other thresholds open; it returns every candidate in its ranking order, and the decision at
    ``(min_votes, score_threshold)`` is the first candidate clearing both: exactly what :func:`decide` picks.
    """
    known = np.array([q.known for q in queries], dtype=bool)
    truth = np.array([q.pallet for q in queries], dtype=object)
    thresholds = np.asarray(score_thresholds, dtype=np.float64)
    shape = (len(block_thresholds), len(min_votes), len(score_thresholds))
    arrays = {name: np.empty(shape) for name in _SWEEP_FIELDS}
    for b, block_threshold in enumerate(block_thresholds):
        decisions = all_candidates(queries, block_threshold=block_threshold)
        for m, votes_needed in enumerate(min_votes):
            outcomes = np.full((len(thresholds), len(queries)), None, dtype=object)
            for qi, decision in enumerate(decisions):
                outcomes[:, qi] = _winners(decision, votes_needed, thresholds)
            for s, figures in enumerate(outcome_figures(known, truth, outcomes)):
                for name in _SWEEP_FIELDS:
                    arrays[name][b, m, s] = getattr(figures, name)
    return ThresholdSweep(
        block_thresholds=tuple(float(b) for b in block_thresholds),
        min_votes=tuple(int(m) for m in min_votes),
        score_thresholds=tuple(float(t) for t in score_thresholds),
        num_known=int(known.sum()),
        num_unknown=int((~known).sum()),
        **arrays,
    )


_SWEEP_FIELDS = (
    "identification_rate",
    "false_reject_rate",
    "misidentification_rate",
    "unknown_registered_rate",
    "unknown_false_match_rate",
)


def _winners(
    decision: Decision[str], votes_needed: int, score_thresholds: FloatArray
) -> npt.NDArray[np.object_]:
    """Decided pallet per score threshold: the first candidate (in rule order) clearing both thresholds."""
    winners = np.full(len(score_thresholds), None, dtype=object)
    undecided = np.ones(len(score_thresholds), dtype=bool)
    for candidate in decision.candidates:
        if candidate.votes < votes_needed:
            continue
        takes = undecided & (candidate.score >= score_thresholds)
        winners[takes] = candidate.pallet
        undecided &= ~takes
        if not undecided.any():
            break
    return winners


@dataclass(frozen=True)
class ThresholdChoice:
    """Thresholds picked from a sweep and the calibration-set figures they reach."""

    thresholds: VotingThresholds
    figures: OpenSetFigures
    max_unknown_match_rate: float
    target_met: bool


def choose_thresholds(
    sweep: ThresholdSweep,
    max_unknown_match_rate: float = DEFAULT_MAX_UNKNOWN_MATCH_RATE,
    one_pallet_sweep: ThresholdSweep | None = None,
) -> ThresholdChoice:
    """Thresholds that keep unknown pallets from being matched and identify as many known ones as possible.

    Among grid points whose unknown false-match rate is at most ``max_unknown_match_rate``: highest
    identification rate, then lowest unknown false-match rate, then the smallest score threshold, then fewest
    votes and lowest block threshold (the most permissive setting reaching that accuracy). The score
    threshold is then moved to the middle of the band of thresholds above it that reach the same figures:
    the smallest one sits right at the calibration set's strongest impostor, the largest right at its weakest
    genuine pallet, and new data is kinder to neither. When no grid point meets the target, the point with
    the lowest unknown false-match rate is taken and ``target_met`` is False.
    ``one_pallet_sweep`` (a sweep over :func:`one_pallet_gallery_neighbours`, same grid) adds the same limit
    for unknown pallets meeting a gallery of one pallet, as a new deployment does.
    """
    if sweep.num_unknown == 0 or sweep.num_known == 0:
        raise ValueError("calibration needs both known and unknown pallet queries")
    false_match = sweep.unknown_false_match_rate
    if one_pallet_sweep is not None:
        false_match = np.maximum(false_match, one_pallet_sweep.unknown_false_match_rate)
    feasible = false_match <= max_unknown_match_rate + 1e-12
    target_met = bool(feasible.any())
    if not target_met:
        logger.warning(
            "no threshold keeps unknown false matches at or below %.4f; taking the lowest reachable",
            max_unknown_match_rate,
        )
        feasible = false_match <= false_match.min() + 1e-12
    best: tuple[float, float, float, int, float] | None = None
    best_index: tuple[int, int, int] = (0, 0, 0)
    for b, m, s in zip(*np.nonzero(feasible), strict=True):
        key = (
            -float(sweep.identification_rate[b, m, s]),
            float(false_match[b, m, s]),
            sweep.score_thresholds[s],
            sweep.min_votes[m],
            sweep.block_thresholds[b],
        )
        if best is None or key < best:
            best, best_index = key, (int(b), int(m), int(s))
    b, m, s = best_index
    s = _middle_of_band(sweep, false_match, b, m, s)
    return ThresholdChoice(
        thresholds=VotingThresholds(
            block_threshold=sweep.block_thresholds[b],
            min_votes=sweep.min_votes[m],
            score_threshold=sweep.score_thresholds[s],
        ),
        figures=sweep.figures_at(b, m, s),
        max_unknown_match_rate=max_unknown_match_rate,
        target_met=target_met,
    )


def _middle_of_band(sweep: ThresholdSweep, false_match: FloatArray, b: int, m: int, s: int) -> int:
    """Middle index of the run of score thresholds from ``s`` up with the same identification and false-match
    rates as at ``s`` (same block threshold and votes)."""
    identification = sweep.identification_rate[b, m]
    end = s
    while (
        end + 1 < len(sweep.score_thresholds)
        and np.isclose(identification[end + 1], identification[s])
        and np.isclose(false_match[b, m, end + 1], false_match[b, m, s])
    ):
        end += 1
    return (s + end) // 2
