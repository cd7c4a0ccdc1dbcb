"""Re-identification metrics: block-level CMC/mAP and pallet-level open-set figures.

Block level follows torchreid's ``eval_market1501``: for every query the gallery is ranked by distance,
gallery entries of the query's own identity seen by the query's own camera are removed (they would be the same
view again), and CMC/AP are computed over what is left. Queries with no remaining true match are skipped.

Pallet level runs the service's decision rule (:mod:`models.voting`: shortlist from exact cosine top-k
neighbours, verification by one-to-one block pairing, decision) so the figures are those the service would
produce on the same fingerprints.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.voting import (
    DEFAULT_SHORTLIST_SIZE,
    Decision,
    Neighbour,
    VotingThresholds,
    decide,
    shortlist,
    unit_rows,
    verify,
)

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

DEFAULT_TOP_K = 10
DEFAULT_BLOCK_THRESHOLDS: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_MIN_VOTES: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
DEFAULT_SCORE_THRESHOLDS: tuple[float, ...] = tuple(round(i / 200, 3) for i in range(201))
DEFAULT_MAX_UNKNOWN_MATCH_RATE = 0.005
DEFAULT_THRESHOLDS_FILE: Path = Path(__file__).resolve().parent / "checkpoints" / "voting_thresholds.json"
"""Thresholds shipped with the default checkpoint, written by ``palletreid evaluate --calibrate``."""


# ----------------------------------------------------------------------------------------------------
# Block level
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankResult:
    """CMC curve (``cmc[r]``: share of valid queries with a true match in the first ``r + 1``) and mAP."""

    cmc: FloatArray
    mean_average_precision: float
    num_queries: int
    num_valid_queries: int

    def rank(self, r: int) -> float:
        """CMC at rank ``r`` (1-based); ranks beyond the gallery size saturate at the last value."""
        if r < 1:
            raise ValueError("rank must be at least 1")
        return float(self.cmc[min(r, len(self.cmc)) - 1])


def cosine_distance_matrix(query: npt.ArrayLike, gallery: npt.ArrayLike) -> FloatArray:
    """``1 - cosine similarity`` between every query row and every gallery row (rows need not be unit)."""
    q = unit_rows(np.asarray(query, dtype=np.float64))
    g = unit_rows(np.asarray(gallery, dtype=np.float64))
    return 1.0 - q @ g.T


def evaluate_rank(
    distmat: npt.ArrayLike,
    query_ids: npt.ArrayLike,
    gallery_ids: npt.ArrayLike,
    query_cameras: npt.ArrayLike,
    gallery_cameras: npt.ArrayLike,
    max_rank: int = 50,
) -> RankResult:
    """torchreid-style CMC and mAP, vectorised.

    ``distmat[i, j]`` is the distance of query ``i`` to gallery ``j`` (smaller = more similar). Gallery
    entries with the query's identity AND camera are ignored for that query. Ties in distance keep gallery
    order. The CMC is cut at ``min(max_rank, number of gallery entries)``.
    """
    distances = np.asarray(distmat, dtype=np.float64)
    q_ids, g_ids = np.asarray(query_ids), np.asarray(gallery_ids)
    q_cams, g_cams = np.asarray(query_cameras), np.asarray(gallery_cameras)
    num_queries, num_gallery = distances.shape
    if q_ids.shape != (num_queries,) or q_cams.shape != (num_queries,):
        raise ValueError("query ids and cameras must have one entry per distance-matrix row")
    if g_ids.shape != (num_gallery,) or g_cams.shape != (num_gallery,):
        raise ValueError("gallery ids and cameras must have one entry per distance-matrix column")
    if num_gallery == 0:
        raise ValueError("empty gallery")
    max_rank = min(max_rank, num_gallery)

    # Integer codes make the per-entry comparisons cheap whatever the id type (strings in practice).
    id_codes = _codes(q_ids, g_ids)
    camera_codes = _codes(q_cams, g_cams)
    first_match_parts: list[npt.NDArray[np.int64]] = []
    average_precision_parts: list[FloatArray] = []
    for start in range(0, num_queries, _QUERY_CHUNK):
        rows = slice(start, start + _QUERY_CHUNK)
        first_match, average_precision = _rank_chunk(
            distances[rows],
            (id_codes[0][rows], id_codes[1]),
            (camera_codes[0][rows], camera_codes[1]),
        )
        first_match_parts.append(first_match)
        average_precision_parts.append(average_precision)
    first_matches = np.concatenate(first_match_parts)
    average_precisions = np.concatenate(average_precision_parts)
    num_valid = len(first_matches)
    if num_valid == 0:
        raise ValueError("no query has a true match in the gallery from another camera")
    cmc = (first_matches[:, None] < np.arange(1, max_rank + 1)[None, :]).mean(axis=0)
    if num_valid < num_queries:
        logger.info(
            "%d of %d queries have no cross-camera match and are skipped",
            num_queries - num_valid,
            num_queries,
        )
    return RankResult(
        cmc=cmc.astype(np.float64),
        mean_average_precision=float(average_precisions.mean()),
        num_queries=num_queries,
        num_valid_queries=num_valid,
    )


_QUERY_CHUNK = 512
"""Queries ranked at once; bounds the memory of the (queries x gallery) intermediate arrays."""

IntArray = npt.NDArray[np.int64]


def _codes(query: npt.NDArray[Any], gallery: npt.NDArray[Any]) -> tuple[IntArray, IntArray]:
    """The same integer code for equal values across query and gallery."""
    _, inverse = np.unique(np.concatenate([query, gallery]), return_inverse=True)
    inverse = inverse.astype(np.int64).reshape(-1)
    return inverse[: len(query)], inverse[len(query) :]


def _rank_chunk(
    distances: FloatArray, ids: tuple[IntArray, IntArray], cameras: tuple[IntArray, IntArray]
) -> tuple[IntArray, FloatArray]:
    """First-match position and AP of the valid queries among ``distances``' rows."""
    (q_ids, g_ids), (q_cams, g_cams) = ids, cameras
    order = np.argsort(distances, axis=1, kind="stable")
    same_id = g_ids[order] == q_ids[:, None]
    keep = ~(same_id & (g_cams[order] == q_cams[:, None]))
    matches = same_id & keep
    # Position of each kept gallery entry in the query's ranking once the removed entries are gone (0-based).
    kept_position = np.cumsum(keep, axis=1) - 1
    num_relevant = matches.sum(axis=1)
    valid = num_relevant > 0
    first_match = np.where(matches, kept_position, distances.shape[1]).min(axis=1)[valid]
    hits_so_far = np.cumsum(matches, axis=1)
    precision_at_hits = np.where(matches, hits_so_far / np.maximum(kept_position + 1, 1), 0.0)
    average_precision = precision_at_hits.sum(axis=1)[valid] / num_relevant[valid]
    return first_match.astype(np.int64), average_precision


# ----------------------------------------------------------------------------------------------------
# Pallet level
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PalletGallery:
    """Stored block fingerprints: ``embeddings[i]`` belongs to pallet ``pallets[i]``.

    All rows of one pallet form its one stored capture (the receipt), as verification sees it.
    """

    embeddings: FloatArray
    pallets: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or len(self.pallets) != self.embeddings.shape[0]:
            raise ValueError("gallery needs one pallet per embedding row")

    @cached_property
    def rows_of(self) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = defaultdict(list)
        for row, pallet in enumerate(self.pallets):
            rows[pallet].append(row)
        return dict(rows)


@dataclass(frozen=True)
class PalletQuery:
    """One dispatch capture: the block fingerprints of one pallet (any block order) and its true identity.

    ``known`` says whether the pallet is in the gallery; an unknown pallet should be registered as new.
    """

    pallet: str
    known: bool
    embeddings: FloatArray


@dataclass(frozen=True)
class QueryNeighbours:
    """A query with the top-k gallery neighbours of each of its blocks and the verified shortlist scores."""

    pallet: str
    known: bool
    neighbours: list[list[Neighbour[str]]]
    scores: dict[str, float]


@dataclass(frozen=True)
class OpenSetFigures:
    """Pallet-level outcome shares at one set of thresholds (NaN where the group is empty).

    Known queries: ``identification_rate`` + ``false_reject_rate`` + ``misidentification_rate`` = 1.
    Unknown queries: ``unknown_registered_rate`` + ``unknown_false_match_rate`` = 1.
    """

    identification_rate: float
    false_reject_rate: float
    misidentification_rate: float
    unknown_registered_rate: float
    unknown_false_match_rate: float
    num_known: int
    num_unknown: int


def find_neighbours(
    queries: Sequence[PalletQuery],
    gallery: PalletGallery,
    top_k: int = DEFAULT_TOP_K,
    shortlist_size: int = DEFAULT_SHORTLIST_SIZE,
) -> list[QueryNeighbours]:
    """Exact cosine top-k over the gallery for every query block (ties keep gallery order), then the
    shortlist of each query verified against the gallery, as the service does with pgvector."""
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    if not queries:
        return []
    gallery_unit = unit_rows(np.asarray(gallery.embeddings, dtype=np.float64))
    blocks = np.concatenate([np.asarray(q.embeddings, dtype=np.float64) for q in queries], axis=0)
    blocks = unit_rows(blocks)
    k = min(top_k, len(gallery.pallets))
    block_neighbours: list[list[Neighbour[str]]] = []
    for start in range(0, len(blocks), _QUERY_CHUNK):
        similarities = blocks[start : start + _QUERY_CHUNK] @ gallery_unit.T
        nearest = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
        block_neighbours.extend(
            [Neighbour(pallet=gallery.pallets[j], similarity=float(row[j])) for j in columns]
            for row, columns in zip(similarities, nearest, strict=True)
        )
    result: list[QueryNeighbours] = []
    first = 0
    for query in queries:
        count = len(query.embeddings)
        neighbours = block_neighbours[first : first + count]
        verified = shortlist(neighbours, shortlist_size)
        captures = {pallet: [gallery_unit[gallery.rows_of[pallet]]] for pallet in verified}
        result.append(
            QueryNeighbours(
                pallet=query.pallet,
                known=query.known,
                neighbours=neighbours,
                scores=verify(blocks[first : first + count], captures),
            )
        )
        first += count
    return result


def one_pallet_gallery_neighbours(
    queries: Sequence[PalletQuery], gallery: PalletGallery, *, pallets_per_query: int = 5, seed: int = 0
) -> list[QueryNeighbours]:
    """Every unknown query against galleries holding one single (other) pallet each.

    A new deployment starts with an almost empty gallery. There, every block of an unknown pallet has the one
    stored pallet as its nearest neighbour, so its votes are not split among many pallets as in a full
    gallery: thresholds calibrated on a full gallery alone would match strangers to the first pallets stored.
    """
    rows_of = gallery.rows_of
    names = sorted(rows_of)
    rng = np.random.default_rng(seed)
    trials: list[QueryNeighbours] = []
    for query in queries:
        if query.known:
            continue
        for index in rng.choice(len(names), size=min(pallets_per_query, len(names)), replace=False):
            rows = rows_of[names[int(index)]]
            single = PalletGallery(
                embeddings=gallery.embeddings[rows], pallets=tuple(gallery.pallets[r] for r in rows)
            )
            trials.extend(find_neighbours([query], single, top_k=len(rows)))
    return trials


def decide_all(queries: Sequence[QueryNeighbours], thresholds: VotingThresholds) -> list[Decision[str]]:
    """The service's decision for every query."""
    return [decide(q.neighbours, q.scores, thresholds) for q in queries]


def open_set_figures(queries: Sequence[QueryNeighbours], decided: Sequence[str | None]) -> OpenSetFigures:
    """Outcome shares given the decided pallet (``None`` = registered as new) of each query."""
    if len(queries) != len(decided):
        raise ValueError("one decision per query is needed")
    known = np.array([q.known for q in queries], dtype=bool)
    truth = np.array([q.pallet for q in queries], dtype=object)
    outcome = np.array(decided, dtype=object)
    return _figures(known, truth, outcome[None, :])[0]


def _figures(
    known: npt.NDArray[np.bool_], truth: npt.NDArray[np.object_], outcomes: npt.NDArray[np.object_]
) -> list[OpenSetFigures]:
    """Figures for each row of ``outcomes`` (rows: threshold settings, columns: queries)."""
    rejected = np.vectorize(lambda pallet: pallet is None, otypes=[bool])(outcomes)
    correct = (outcomes == truth[None, :]) & ~rejected
    num_known, num_unknown = int(known.sum()), int((~known).sum())
    identified = _share(correct[:, known], num_known)
    false_reject = _share(rejected[:, known], num_known)
    misidentified = _share((~correct & ~rejected)[:, known], num_known)
    registered = _share(rejected[:, ~known], num_unknown)
    false_match = _share(~rejected[:, ~known], num_unknown)
    return [
        OpenSetFigures(
            identification_rate=float(identified[i]),
            false_reject_rate=float(false_reject[i]),
            misidentification_rate=float(misidentified[i]),
            unknown_registered_rate=float(registered[i]),
            unknown_false_match_rate=float(false_match[i]),
            num_known=num_known,
            num_unknown=num_unknown,
        )
        for i in range(outcomes.shape[0])
    ]


def _share(flags: npt.NDArray[np.bool_], count: int) -> FloatArray:
    if count == 0:
        return np.full(flags.shape[0], math.nan)
    return flags.sum(axis=1) / count


@dataclass(frozen=True)
class PalletScores:
    """Per-query pallet scores under the voting rule's score definition.

    ``genuine``: for each known query, the score of its true pallet (0 when it missed the shortlist).
    ``impostor``: for each query (known or unknown), the best score of any other pallet (0 if none seen).
    """

    genuine: FloatArray
    impostor: FloatArray


def pallet_scores(queries: Sequence[QueryNeighbours]) -> PalletScores:
    """Genuine and best-impostor pallet scores (the scores do not depend on the thresholds)."""
    genuine: list[float] = []
    impostor: list[float] = []
    for query, decision in zip(queries, _all_candidates(queries, block_threshold=-1.0), strict=True):
        scores = {c.pallet: c.score for c in decision.candidates}
        if query.known:
            genuine.append(scores.get(query.pallet, 0.0))
        impostor.append(max((s for p, s in scores.items() if p != query.pallet), default=0.0))
    return PalletScores(
        genuine=np.asarray(genuine, dtype=np.float64), impostor=np.asarray(impostor, dtype=np.float64)
    )


def _all_candidates(queries: Sequence[QueryNeighbours], block_threshold: float) -> list[Decision[str]]:
    """Decisions with every threshold but ``block_threshold`` open, listing every candidate pallet."""
    open_thresholds = VotingThresholds(block_threshold=block_threshold, min_votes=1, score_threshold=-1.0)
    return [decide(q.neighbours, q.scores, open_thresholds, max_candidates=len(q.scores)) for q in queries]


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
        decisions = _all_candidates(queries, block_threshold=block_threshold)
        for m, votes_needed in enumerate(min_votes):
            outcomes = np.full((len(thresholds), len(queries)), None, dtype=object)
            for qi, decision in enumerate(decisions):
                outcomes[:, qi] = _winners(decision, votes_needed, thresholds)
            for s, figures in enumerate(_figures(known, truth, outcomes)):
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
