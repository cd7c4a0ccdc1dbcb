"""Block-level rank metrics: CMC and mAP over a query-by-gallery distance matrix.

Follows torchreid's ``eval_market1501``: for every query the gallery is ranked by distance, gallery entries of
the query's own identity seen by the query's own camera are removed (they would be the same view again), and
CMC/AP are computed over what is left. Queries with no remaining true match are skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.runtime.voting import unit_rows

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

QUERY_CHUNK = 512
"""Queries ranked at once; bounds the memory of the (queries x gallery) intermediate arrays."""


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
    for start in range(0, num_queries, QUERY_CHUNK):
        rows = slice(start, start + QUERY_CHUNK)
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
