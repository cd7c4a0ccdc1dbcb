"""Pallet-level open-set figures: the service's decision rule run on exact neighbours of stored fingerprints.

The rule is :mod:`models.runtime.voting` (shortlist from exact cosine top-k neighbours, verification by
one-to-one block pairing, decision), so the figures are those the service would produce on the same
fingerprints. Known queries should be identified, unknown ones registered as new.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from models.evaluation.ranking import QUERY_CHUNK
from models.runtime.voting import (
    DEFAULT_SHORTLIST_SIZE,
    DEFAULT_TOP_K,
    Decision,
    Neighbour,
    VotingThresholds,
    decide,
    shortlist,
    unit_rows,
    verify,
)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PalletGallery:
    """Stored block fingerprints: ``embeddings[i]`` belongs to pallet ``pallets[i]``.

    All rows of one pallet form its one stored capture (the receipt), as verification sees it.
    """

    embeddings: FloatArray
    pallets: tuple[str, ...]
    captures: tuple[int, ...] = ()
    """Dataset index of the capture behind each row (empty when built from bare fingerprints)."""

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or len(self.pallets) != self.embeddings.shape[0]:
            raise ValueError("gallery needs one pallet per embedding row")
        if self.captures and len(self.captures) != len(self.pallets):
            raise ValueError("gallery needs one capture index per embedding row")

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
    captures: tuple[int, ...] = ()
    """Dataset index of the capture behind each block row, in the query's (shuffled) block order."""


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
    for start in range(0, len(blocks), QUERY_CHUNK):
        similarities = blocks[start : start + QUERY_CHUNK] @ gallery_unit.T
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
    return outcome_figures(known, truth, outcome[None, :])[0]


def outcome_figures(
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
    for query, decision in zip(queries, all_candidates(queries, block_threshold=-1.0), strict=True):
        scores = {c.pallet: c.score for c in decision.candidates}
        if query.known:
            genuine.append(scores.get(query.pallet, 0.0))
        impostor.append(max((s for p, s in scores.items() if p != query.pallet), default=0.0))
    return PalletScores(
        genuine=np.asarray(genuine, dtype=np.float64), impostor=np.asarray(impostor, dtype=np.float64)
    )


def all_candidates(queries: Sequence[QueryNeighbours], block_threshold: float) -> list[Decision[str]]:
    """Decisions with every threshold but ``block_threshold`` open, listing every candidate pallet."""
    open_thresholds = VotingThresholds(block_threshold=block_threshold, min_votes=1, score_threshold=-1.0)
    return [decide(q.neighbours, q.scores, open_thresholds, max_candidates=len(q.scores)) for q in queries]
