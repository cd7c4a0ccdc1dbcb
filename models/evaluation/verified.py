"""The service's banded decision (:func:`models.runtime.voting.decide_verified`) evaluated end to end.

For each gallery size N the gallery holds the receipts of the first N known pallets (sorted by id) and the
queries are their dispatches plus the dispatches of every unknown pallet, so the unknown pallets meet
galleries of every size (a new deployment holds few pallets, an old one many). Each query goes through the
whole rule, as a dispatch does in the service: exact cosine top-k neighbours of its blocks, the shortlist,
one-to-one block pairing, then geometric verification of the best candidates with local features, loaded
per checked capture from a :class:`~models.evaluation.features.FeatureStore` (extracted with the service's
image loader and the checkpoint's extractor settings).

Gaps to the service, stated: the service searches an HNSW index (recall@10 0.9995 at 1,000 pallets,
``docs/benchmarks.md``), the evaluation exact neighbours; the service verifies up to
``captures_per_pallet`` recent captures of a pallet, the evaluation's gallery holds one (the receipt). The
visual-word search is exact here too (the service: pgvector's HNSW over ``sparsevec``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.sparse
from tqdm import tqdm

from models.evaluation.features import FeatureStore
from models.evaluation.open_set import PalletGallery, PalletQuery
from models.evaluation.protocol import OpenSetProtocol
from models.evaluation.ranking import QUERY_CHUNK
from models.runtime.local_features import LocalFeatures
from models.runtime.visual_words import SparseWords, VisualVocabulary
from models.runtime.voting import (
    CaptureFeatures,
    GeometryParameters,
    Neighbour,
    Outcome,
    VerifiedDecision,
    VotingThresholds,
    WordCandidate,
    decide_verified,
    rank_word_candidates,
    shortlist,
    unit_rows,
)

DEFAULT_GALLERY_SIZES: tuple[int, ...] = (1, 10, 100, 1000)


@dataclass(frozen=True)
class QueryOutcome:
    """What the banded rule made of one dispatch, and the inlier evidence behind it."""

    pallet: str
    known: bool
    outcome: Outcome
    decided: str | None
    """The matched pallet (``None`` unless matched)."""
    review_candidates: tuple[str, ...]
    """The checked candidates a reviewer is shown (only for :attr:`Outcome.REVIEW`)."""
    network_decided: str | None
    """What the network stage alone decided under the network thresholds."""
    true_shortlisted: bool
    true_checked: bool
    genuine_inliers: int | None
    """Inliers of the true pallet's paired blocks (known queries whose true pallet was checked)."""
    genuine_block_inliers: tuple[int, ...]
    impostor_inliers: int | None
    """Inliers of the strongest checked candidate that is not the true pallet."""
    impostor_block_inliers: tuple[int, ...]
    """Per-pair inliers of every checked candidate that is not the true pallet."""
    impostor_confirmed_blocks: int | None
    """Blocks with ``block_inliers`` or more of the strongest checked candidate not the true pallet."""
    runner_up_inliers: int | None
    candidates_checked: int


def query_outcome(
    query: PalletQuery, decision: VerifiedDecision[str], shortlisted: Sequence[str]
) -> QueryOutcome:
    """Summarise a :class:`~models.runtime.voting.VerifiedDecision` against the query's true identity."""
    checked = decision.checked
    genuine = next((e for e in checked if e.pallet == query.pallet), None)
    impostors = [e for e in checked if e.pallet != query.pallet]
    strongest_impostor = max(impostors, key=lambda e: (e.inliers, e.confirmed_blocks), default=None)
    return QueryOutcome(
        pallet=query.pallet,
        known=query.known,
        outcome=decision.outcome,
        decided=decision.pallet,
        review_candidates=tuple(e.pallet for e in checked) if decision.outcome is Outcome.REVIEW else (),
        network_decided=decision.network.pallet,
        true_shortlisted=query.pallet in shortlisted,
        true_checked=genuine is not None,
        genuine_inliers=genuine.inliers if genuine is not None else None,
        genuine_block_inliers=genuine.block_inliers if genuine is not None else (),
        impostor_inliers=strongest_impostor.inliers if strongest_impostor is not None else None,
        impostor_block_inliers=tuple(count for e in impostors for count in e.block_inliers),
        impostor_confirmed_blocks=(
            strongest_impostor.confirmed_blocks if strongest_impostor is not None else None
        ),
        runner_up_inliers=decision.runner_up.inliers if decision.runner_up is not None else None,
        candidates_checked=len(checked),
    )


def block_neighbours(
    queries: Sequence[PalletQuery], gallery: PalletGallery, top_k: int
) -> list[list[list[Neighbour[str]]]]:
    """Exact cosine top-k gallery neighbours of every block of every query (ties keep gallery order)."""
    if not queries:
        return []
    gallery_unit = unit_rows(gallery.embeddings)
    blocks = unit_rows(np.concatenate([q.embeddings for q in queries], axis=0))
    k = min(top_k, len(gallery.pallets))
    flat: list[list[Neighbour[str]]] = []
    for start in range(0, len(blocks), QUERY_CHUNK):
        similarities = blocks[start : start + QUERY_CHUNK] @ gallery_unit.T
        nearest = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
        flat.extend(
            [Neighbour(pallet=gallery.pallets[j], similarity=float(row[j])) for j in columns]
            for row, columns in zip(similarities, nearest, strict=True)
        )
    result: list[list[list[Neighbour[str]]]] = []
    first = 0
    for query in queries:
        result.append(flat[first : first + len(query.embeddings)])
        first += len(query.embeddings)
    return result


def verify_queries(
    queries: Sequence[PalletQuery],
    gallery: PalletGallery,
    paths: Sequence[Path],
    store: FeatureStore,
    *,
    thresholds: VotingThresholds,
    geometry: GeometryParameters,
    top_k: int,
    shortlist_size: int,
    workers: int = 1,
    description: str = "verifying",
    vocabulary: VisualVocabulary | None = None,
) -> list[QueryOutcome]:
    """Run the banded rule for every query against ``gallery`` (one stored capture per pallet).

    ``paths[i]`` is the image of dataset capture ``i`` (the ``captures`` indices of queries and gallery).
    Queries run on ``workers`` threads; OpenCV releases the GIL while extracting and matching. With a
    ``vocabulary`` the visual-word stage runs too, as in the service.
    """
    if not gallery.captures or any(not q.captures for q in queries):
        raise ValueError("the verified rule needs the capture index of every query and gallery row")
    gallery_unit = unit_rows(gallery.embeddings)
    rows_of = gallery.rows_of
    neighbours_of = block_neighbours(queries, gallery, top_k)

    def stored_features(pallet: str, capture: int) -> CaptureFeatures:
        if capture != 0:
            raise IndexError(f"{pallet} has one stored capture, not {capture + 1}")
        return CaptureFeatures(store.get_all(paths[gallery.captures[row]] for row in rows_of[pallet]))

    words_search = (
        _WordSearch(vocabulary, [store.get(paths[capture]) for capture in gallery.captures], gallery.pallets)
        if vocabulary is not None and geometry.word_candidates_checked > 0
        else None
    )

    def run(index: int) -> QueryOutcome:
        query, neighbours = queries[index], neighbours_of[index]
        shortlisted = shortlist(neighbours, shortlist_size)
        query_features = store.get_all(paths[capture] for capture in query.captures)
        decision = decide_verified(
            neighbours,
            query.embeddings,
            CaptureFeatures(query_features),
            {pallet: [gallery_unit[rows_of[pallet]]] for pallet in shortlisted},
            stored_features,
            thresholds,
            geometry,
            word_candidates=(lambda: words_search.candidates(query_features, geometry, rows_of))
            if words_search is not None
            else None,
        )
        return query_outcome(query, decision, shortlisted)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(
            tqdm(pool.map(run, range(len(queries))), total=len(queries), desc=description, unit="query")
        )


def gallery_subset(protocol: OpenSetProtocol, size: int) -> tuple[PalletGallery, list[PalletQuery]]:
    """Receipts of the first ``size`` known pallets; queries of those pallets and of every unknown one."""
    kept = set(protocol.known_pallets[:size])
    rows = [row for row, pallet in enumerate(protocol.gallery.pallets) if pallet in kept]
    gallery = PalletGallery(
        embeddings=protocol.gallery.embeddings[rows],
        pallets=tuple(protocol.gallery.pallets[row] for row in rows),
        captures=tuple(protocol.gallery.captures[row] for row in rows),
    )
    queries = [q for q in protocol.queries if (q.pallet in kept if q.known else True)]
    return gallery, queries


@dataclass(frozen=True)
class GallerySizeFigures:
    """The banded rule (and the network stage alone) at one gallery size; counts of queries, then shares."""

    gallery_pallets: int
    known_queries: int
    unknown_queries: int
    known_identified: int
    """Matched to the true pallet."""
    known_wrong_match: int
    """Matched to another pallet: a silent merge of two pallets' histories."""
    known_review: int
    """Registered as new and flagged for review."""
    known_review_with_true_candidate: int
    """Of those, the reviewer is shown the true pallet among the candidates."""
    known_new: int
    """Registered as new, not flagged: the pallet gets a second identity."""
    unknown_matched: int
    """Unknown pallets matched to a stored pallet: false merges."""
    unknown_review: int
    unknown_new: int
    network_known_identified: int
    network_known_wrong_match: int
    network_known_new: int
    network_unknown_matched: int
    """The same counts under the network thresholds alone (the rule before geometric verification)."""
    true_pallet_shortlisted: int
    true_pallet_checked: int
    """Known queries whose true pallet reached the shortlist / the geometric check."""
    rates: dict[str, float]
    """Each count above as a share of its group (known or unknown queries; NaN for an empty group)."""
    inliers: dict[str, dict[str, float | int | None]]
    """Inlier distributions (:func:`inlier_figures`)."""
    unknown_band_conditions: dict[str, int]
    """Which of the match band's conditions the strongest candidate of unknown queries met
    (:func:`band_conditions`)."""


_KNOWN_COUNTS = (
    "known_identified",
    "known_wrong_match",
    "known_review",
    "known_review_with_true_candidate",
    "known_new",
    "network_known_identified",
    "network_known_wrong_match",
    "network_known_new",
    "true_pallet_shortlisted",
    "true_pallet_checked",
)
_UNKNOWN_COUNTS = ("unknown_matched", "unknown_review", "unknown_new", "network_unknown_matched")


class _WordSearch:
    """Exact visual-word search over a gallery (the service: a ``sparsevec`` HNSW search)."""

    def __init__(
        self, vocabulary: VisualVocabulary, gallery_features: Sequence[LocalFeatures], pallets: Sequence[str]
    ) -> None:
        self.vocabulary = vocabulary
        self.words = [vocabulary.encode(features) for features in gallery_features]
        self.pallets = list(pallets)
        self.matrix = _sparse_rows(self.words, vocabulary.size)

    def candidates(
        self,
        query_features: Sequence[LocalFeatures],
        geometry: GeometryParameters,
        rows_of: dict[str, list[int]],
    ) -> list[WordCandidate[str]]:
        query_words = [self.vocabulary.encode(features) for features in query_features]
        similarities = (_sparse_rows(query_words, self.vocabulary.size) @ self.matrix.T).toarray()
        k = min(geometry.word_top_k, similarities.shape[1])
        nearest = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
        neighbours = [
            [Neighbour(pallet=self.pallets[j], similarity=float(row[j])) for j in columns if row[j] > 0]
            for row, columns in zip(similarities, nearest, strict=True)
        ]
        pallets = shortlist(neighbours, geometry.word_shortlist_size) if any(neighbours) else []
        stored: dict[str, list[tuple[int, list[SparseWords | None]]]] = {
            pallet: [(0, [self.words[row] for row in rows_of[pallet]])] for pallet in pallets
        }
        return rank_word_candidates(list(query_words), stored)


def _sparse_rows(words: Sequence[SparseWords], dimensions: int) -> scipy.sparse.csr_matrix:
    indptr = np.concatenate(([0], np.cumsum([len(w) for w in words]))).astype(np.int64)
    indices = np.concatenate([w.indices for w in words]) if words else np.zeros(0, np.int32)
    values = np.concatenate([w.values for w in words]) if words else np.zeros(0, np.float32)
    return scipy.sparse.csr_matrix((values, indices, indptr), shape=(len(words), dimensions))


def gallery_size_figures(
    gallery_pallets: int, outcomes: Sequence[QueryOutcome], geometry: GeometryParameters
) -> GallerySizeFigures:
    known = [o for o in outcomes if o.known]
    unknown = [o for o in outcomes if not o.known]

    def count(group: Sequence[QueryOutcome], test: Callable[[QueryOutcome], bool]) -> int:
        return sum(1 for o in group if test(o))

    counts = {
        "known_identified": count(known, lambda o: o.outcome is Outcome.MATCHED and o.decided == o.pallet),
        "known_wrong_match": count(known, lambda o: o.outcome is Outcome.MATCHED and o.decided != o.pallet),
        "known_review": count(known, lambda o: o.outcome is Outcome.REVIEW),
        "known_review_with_true_candidate": count(
            known, lambda o: o.outcome is Outcome.REVIEW and o.pallet in o.review_candidates
        ),
        "known_new": count(known, lambda o: o.outcome is Outcome.NEW),
        "network_known_identified": count(known, lambda o: o.network_decided == o.pallet),
        "network_known_wrong_match": count(
            known, lambda o: o.network_decided is not None and o.network_decided != o.pallet
        ),
        "network_known_new": count(known, lambda o: o.network_decided is None),
        "true_pallet_shortlisted": count(known, lambda o: o.true_shortlisted),
        "true_pallet_checked": count(known, lambda o: o.true_checked),
        "unknown_matched": count(unknown, lambda o: o.outcome is Outcome.MATCHED),
        "unknown_review": count(unknown, lambda o: o.outcome is Outcome.REVIEW),
        "unknown_new": count(unknown, lambda o: o.outcome is Outcome.NEW),
        "network_unknown_matched": count(unknown, lambda o: o.network_decided is not None),
    }
    rates = {name: _share(counts[name], len(known)) for name in _KNOWN_COUNTS}
    rates.update({name: _share(counts[name], len(unknown)) for name in _UNKNOWN_COUNTS})
    return GallerySizeFigures(
        gallery_pallets=gallery_pallets,
        known_queries=len(known),
        unknown_queries=len(unknown),
        rates=rates,
        inliers=inlier_figures(outcomes),
        unknown_band_conditions=band_conditions(unknown, geometry),
        **counts,
    )


def band_conditions(outcomes: Sequence[QueryOutcome], geometry: GeometryParameters) -> dict[str, int]:
    """How close impostors came to a merge, condition by condition.

    Of the queries whose strongest impostor reached the review band's sum: how many also had
    ``match_blocks`` confirmed blocks, a margin of ``min_margin`` over the runner-up, both, and the match
    band's sum. A query with both conditions was kept from a merge by the sum alone.
    """
    near = [
        (o.impostor_inliers, o)
        for o in outcomes
        if o.impostor_inliers is not None and o.impostor_inliers >= geometry.review_inliers
    ]
    blocks = [(o.impostor_confirmed_blocks or 0) >= geometry.match_blocks for _, o in near]
    margin = [inliers - (o.runner_up_inliers or 0) >= geometry.min_margin for inliers, o in near]
    return {
        "reached_review_sum": len(near),
        "with_match_blocks": sum(blocks),
        "with_margin": sum(margin),
        "with_match_blocks_and_margin": sum(b and m for b, m in zip(blocks, margin, strict=True)),
        "reached_match_sum": sum(inliers >= geometry.match_inliers for inliers, _ in near),
    }


def inlier_figures(outcomes: Sequence[QueryOutcome]) -> dict[str, dict[str, float | int | None]]:
    """Inlier distributions the bands are set on, to show their margins.

    ``genuine``: summed inliers of the true pallet (known queries whose true pallet was checked);
    ``impostor``: the strongest checked candidate that is not the true pallet, per query (known and
    unknown); ``runner_up``: the second strongest checked candidate, what the service records as its live
    impostor sample; ``unknown_best``: the strongest candidate of unknown queries; ``genuine_block`` and
    ``impostor_block``: inliers of single paired blocks.
    """
    known = [o for o in outcomes if o.known]
    return {
        "genuine": distribution([o.genuine_inliers for o in known if o.genuine_inliers is not None]),
        "genuine_block": distribution([c for o in known for c in o.genuine_block_inliers]),
        "impostor": distribution([o.impostor_inliers for o in outcomes if o.impostor_inliers is not None]),
        "impostor_block": distribution([c for o in outcomes for c in o.impostor_block_inliers]),
        "runner_up": distribution([o.runner_up_inliers for o in outcomes if o.runner_up_inliers is not None]),
        "unknown_best": distribution(
            [o.impostor_inliers for o in outcomes if not o.known and o.impostor_inliers is not None]
        ),
    }


def distribution(values: Sequence[int]) -> dict[str, float | int | None]:
    """Count, min, p1, p5, median, p99, p99.9 and max (``None`` when there are no values)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return {"n": 0, **dict.fromkeys(("min", "p1", "p5", "median", "p99", "p99_9", "max"))}
    p1, p5, median, p99, p999 = np.percentile(array, [1, 5, 50, 99, 99.9])
    return {
        "n": int(array.size),
        "min": int(array.min()),
        "p1": round(float(p1), 1),
        "p5": round(float(p5), 1),
        "median": round(float(median), 1),
        "p99": round(float(p99), 1),
        "p99_9": round(float(p999), 1),
        "max": int(array.max()),
    }


def _share(count: int, total: int) -> float:
    return count / total if total else math.nan


def effective_gallery_sizes(requested: Sequence[int], known_pallets: int) -> list[int]:
    """Requested sizes capped at the number of known pallets, deduplicated, ascending."""
    if not requested or min(requested) < 1:
        raise ValueError("gallery sizes must be positive")
    return sorted({min(size, known_pallets) for size in requested})


def genuine_and_impostor_sums(
    outcomes: Sequence[QueryOutcome],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Summed inliers of the true pallet (known queries) and of the best impostor (every query), for plots."""
    genuine = [o.genuine_inliers for o in outcomes if o.known and o.genuine_inliers is not None]
    impostor = [o.impostor_inliers for o in outcomes if o.impostor_inliers is not None]
    return np.asarray(genuine, dtype=np.float64), np.asarray(impostor, dtype=np.float64)
