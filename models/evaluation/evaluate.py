"""End-to-end evaluation of a checkpoint on a capture dataset: block-level ranking and pallet-level open set.

See ``docs/evaluation.md`` for the precise meaning of every reported number.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from models.evaluation.calibration import (
    DEFAULT_MAX_UNKNOWN_MATCH_RATE,
    DEFAULT_SCORE_THRESHOLDS,
    choose_thresholds,
    sweep_thresholds,
)
from models.evaluation.features import FEATURES_CACHE, FeatureStore
from models.evaluation.open_set import (
    OpenSetFigures,
    QueryNeighbours,
    decide_all,
    find_neighbours,
    one_pallet_gallery_neighbours,
    open_set_figures,
    pallet_scores,
)
from models.evaluation.protocol import (
    OpenSetProtocol,
    build_open_set,
    matches_attributes,
    query_gallery_indices,
)
from models.evaluation.ranking import cosine_distance_matrix, evaluate_rank
from models.evaluation.report import (
    BlockLevelReport,
    EvaluationReport,
    PalletLevelReport,
    VerifiedLevelReport,
    sweep_point,
)
from models.evaluation.verified import (
    QueryOutcome,
    effective_gallery_sizes,
    gallery_size_figures,
    gallery_subset,
    genuine_and_impostor_sums,
    verify_queries,
)
from models.runtime.checkpoint import DEFAULT_CHECKPOINT, load_vocabulary
from models.runtime.images import load_image_file
from models.runtime.inference import Embedder
from models.runtime.visual_words import VisualVocabulary
from models.runtime.voting import (
    DEFAULT_SHORTLIST_SIZE,
    DEFAULT_TOP_K,
    GeometryParameters,
    VotingThresholds,
)
from models.training.data import BlockImageRecord, read_dataset

logger = logging.getLogger(__name__)

EMBEDDINGS_CACHE = "embeddings.npz"


def embed_captures(
    embedder: Embedder,
    captures: Sequence[BlockImageRecord],
    *,
    batch_size: int = 32,
    cache: Path | None = None,
) -> npt.NDArray[np.float32]:
    """Fingerprints of ``captures``, taking those of files already in ``cache`` (.npz, same model).

    The cache is keyed by file path and grows: fingerprints computed here are added to it, so evaluations
    that use different parts of one dataset (new and aged dispatches) embed each file once.
    """
    paths = [str(c.path) for c in captures]
    embeddings = np.empty((len(captures), embedder.embedding_dim), dtype=np.float32)
    cached_paths = np.empty(0, dtype=str)
    cached = np.empty((0, embedder.embedding_dim), dtype=np.float32)
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if str(stored["model_id"]) == embedder.model_id:
                cached_paths = stored["paths"]
                cached = np.asarray(stored["embeddings"], dtype=np.float32)
            else:
                logger.info("embedding cache %s is for another model; recomputing", cache)
    row_of = {str(path): row for row, path in enumerate(cached_paths)}
    missing = [index for index, path in enumerate(paths) if path not in row_of]
    found = [index for index, path in enumerate(paths) if path in row_of]
    embeddings[found] = cached[[row_of[paths[index]] for index in found]]
    if not missing:
        logger.info("reusing embeddings from %s", cache)
        return embeddings
    if found:
        logger.info("reusing %d embeddings from %s, embedding %d", len(found), cache, len(missing))
    with tqdm(total=len(missing), desc="embedding", unit="img") as progress:
        for start in range(0, len(missing), batch_size):
            batch = missing[start : start + batch_size]
            embeddings[batch] = embedder.embed([load_image_file(captures[i].path) for i in batch], batch_size)
            progress.update(len(batch))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        new_paths = np.array([paths[index] for index in missing])
        np.savez_compressed(
            cache,
            model_id=np.array(embedder.model_id),
            paths=np.concatenate([cached_paths.astype(new_paths.dtype), new_paths]),
            embeddings=np.concatenate([cached, embeddings[missing]]),
        )
    return embeddings


def block_level(
    captures: Sequence[BlockImageRecord],
    embeddings: npt.NDArray[np.float32],
    query_index: Sequence[int],
    gallery_index: Sequence[int],
) -> tuple[BlockLevelReport, npt.NDArray[np.float64]]:
    """Rank metrics and the query-by-gallery cosine distance matrix."""
    q = np.asarray(query_index, dtype=np.int64)
    g = np.asarray(gallery_index, dtype=np.int64)
    distances = cosine_distance_matrix(embeddings[q], embeddings[g])
    result = evaluate_rank(
        distances,
        np.array([captures[i].identity for i in q]),
        np.array([captures[i].identity for i in g]),
        np.array([captures[i].camera for i in q]),
        np.array([captures[i].camera for i in g]),
    )
    report = BlockLevelReport(
        rank1=result.rank(1),
        rank5=result.rank(5),
        rank10=result.rank(10),
        mean_average_precision=result.mean_average_precision,
        num_queries=result.num_queries,
        num_valid_queries=result.num_valid_queries,
        num_gallery=len(g),
        num_identities=len({c.identity for c in captures}),
        cmc=[float(v) for v in result.cmc],
    )
    return report, distances


def block_pair_similarities(
    captures: Sequence[BlockImageRecord],
    query_index: Sequence[int],
    gallery_index: Sequence[int],
    distances: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Cosine similarities of genuine pairs (same block) and impostor pairs (blocks of different pallets).

    Pairs of different blocks of the same pallet are neither and left out; pairs seen by one camera are too.
    """
    similarity = 1.0 - distances
    identity = _codes([c.identity for c in captures])
    pallet = _codes([c.pallet for c in captures])
    camera = _codes([c.camera for c in captures])
    q, g = np.asarray(query_index, dtype=np.int64), np.asarray(gallery_index, dtype=np.int64)
    cross_camera = camera[q][:, None] != camera[g][None, :]
    genuine = similarity[(identity[q][:, None] == identity[g][None, :]) & cross_camera]
    impostor = similarity[(pallet[q][:, None] != pallet[g][None, :]) & cross_camera]
    return genuine, impostor


def _codes(values: Sequence[str]) -> npt.NDArray[np.int64]:
    _, inverse = np.unique(np.asarray(values), return_inverse=True)
    return inverse.astype(np.int64).reshape(-1)


@dataclass(frozen=True)
class PalletEvaluation:
    report: PalletLevelReport
    neighbours: list[QueryNeighbours]
    thresholds: VotingThresholds


def pallet_level(
    protocol: OpenSetProtocol,
    *,
    top_k: int = DEFAULT_TOP_K,
    shortlist_size: int = DEFAULT_SHORTLIST_SIZE,
    thresholds: VotingThresholds | None = None,
    thresholds_source: str = "given",
    max_unknown_match_rate: float = DEFAULT_MAX_UNKNOWN_MATCH_RATE,
    seed: int = 0,
) -> PalletEvaluation:
    """Open-set figures at ``thresholds``, or at thresholds calibrated on these queries when ``None``."""
    neighbours = find_neighbours(
        protocol.queries, protocol.gallery, top_k=top_k, shortlist_size=shortlist_size
    )
    one_pallet_trials = one_pallet_gallery_neighbours(protocol.queries, protocol.gallery, seed=seed)
    calibration: dict[str, Any] | None = None
    if thresholds is None:
        choice = choose_thresholds(
            sweep_thresholds(neighbours),
            max_unknown_match_rate=max_unknown_match_rate,
            one_pallet_sweep=sweep_thresholds(one_pallet_trials),
        )
        thresholds = choice.thresholds
        thresholds_source = "calibrated"
        calibration = {"max_unknown_match_rate": max_unknown_match_rate, "target_met": choice.target_met}
    figures = open_set_figures(neighbours, [d.pallet for d in decide_all(neighbours, thresholds)])
    one_pallet_matches = [d.pallet is not None for d in decide_all(one_pallet_trials, thresholds)]
    score_grid = sorted({*DEFAULT_SCORE_THRESHOLDS, thresholds.score_threshold})
    curve = sweep_thresholds(
        neighbours,
        block_thresholds=(thresholds.block_threshold,),
        min_votes=(thresholds.min_votes,),
        score_thresholds=score_grid,
    ).curve(thresholds.block_threshold, thresholds.min_votes)
    report = PalletLevelReport(
        top_k=top_k,
        shortlist_size=shortlist_size,
        num_known_pallets=len(protocol.known_pallets),
        num_unknown_pallets=len(protocol.unknown_pallets),
        num_known_queries=figures.num_known,
        num_unknown_queries=figures.num_unknown,
        gallery_cameras=protocol.gallery_cameras,
        query_cameras=protocol.query_cameras,
        thresholds=asdict(thresholds),
        thresholds_source=thresholds_source,
        at_thresholds=asdict(figures),
        calibration=calibration,
        sweep=[sweep_point(t, f) for t, f in curve],
        one_pallet_gallery_false_match_rate=float(np.mean(one_pallet_matches))
        if one_pallet_matches
        else math.nan,
        num_one_pallet_gallery_trials=len(one_pallet_matches),
    )
    return PalletEvaluation(report=report, neighbours=neighbours, thresholds=thresholds)


@dataclass(frozen=True)
class VerifiedEvaluation:
    report: VerifiedLevelReport
    largest_gallery_outcomes: list[QueryOutcome]
    geometry: GeometryParameters


def verified_level(
    protocol: OpenSetProtocol,
    captures: Sequence[BlockImageRecord],
    *,
    gallery_sizes: Sequence[int],
    thresholds: VotingThresholds,
    geometry: GeometryParameters,
    geometry_source: str,
    top_k: int,
    shortlist_size: int,
    features_cache: Path | None,
    workers: int,
    vocabulary: VisualVocabulary | None = None,
) -> VerifiedEvaluation:
    """The banded rule at every gallery size (sizes above the number of known pallets are capped)."""
    sizes = effective_gallery_sizes(gallery_sizes, len(protocol.known_pallets))
    if sorted(set(gallery_sizes)) != sizes:
        logger.warning(
            "gallery sizes %s evaluated as %s (%d known pallets)",
            list(gallery_sizes),
            sizes,
            len(protocol.known_pallets),
        )
    store = FeatureStore(geometry.extractor, features_cache)
    paths = [capture.path for capture in captures]
    figures = []
    outcomes: list[QueryOutcome] = []
    try:
        for size in sizes:
            gallery, queries = gallery_subset(protocol, size)
            outcomes = verify_queries(
                queries,
                gallery,
                paths,
                store,
                thresholds=thresholds,
                geometry=geometry,
                top_k=top_k,
                shortlist_size=shortlist_size,
                workers=workers,
                description=f"verified rule, gallery {size}",
                vocabulary=vocabulary,
            )
            figures.append(gallery_size_figures(size, outcomes, geometry))
    finally:
        store.save()
    report = VerifiedLevelReport(
        geometry=asdict(geometry),
        geometry_source=geometry_source,
        network_thresholds=asdict(thresholds),
        top_k=top_k,
        shortlist_size=shortlist_size,
        captures_per_pallet=1,
        neighbour_search="exact cosine top-k (the service: HNSW, recall@10 0.9995 at 1,000 pallets)",
        gallery_sizes=figures,
        features_extracted=store.extracted,
        features_from_cache=store.loaded,
        vocabulary_id=vocabulary.vocabulary_id
        if vocabulary is not None and geometry.word_candidates_checked > 0
        else None,
    )
    return VerifiedEvaluation(report=report, largest_gallery_outcomes=outcomes, geometry=geometry)


def evaluate_checkpoint(
    checkpoint: Path | None,
    dataset_root: Path,
    *,
    out_dir: Path | None = None,
    split: str | None = None,
    unknown_fraction: float = 0.5,
    top_k: int = DEFAULT_TOP_K,
    shortlist_size: int = DEFAULT_SHORTLIST_SIZE,
    thresholds: VotingThresholds | None = None,
    thresholds_source: str = "given",
    max_unknown_match_rate: float = DEFAULT_MAX_UNKNOWN_MATCH_RATE,
    batch_size: int = 32,
    num_threads: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    query_where: Mapping[str, str] | None = None,
    gallery_where: Mapping[str, str] | None = None,
    gallery_sizes: Sequence[int] = (),
    geometry: GeometryParameters | None = None,
    geometry_source: str = "defaults",
    workers: int = 1,
    cache_dir: Path | None = None,
) -> EvaluationReport:
    """Embed ``dataset_root`` with ``checkpoint`` (None: the shipped one) and measure it.

    ``split`` keeps only the rows of that split. ``thresholds=None`` calibrates the voting thresholds on this
    data (optimistic figures; use held-out data with the calibrated thresholds for honest ones).
    ``query_where`` restricts the queries (block and pallet level) to captures with these attribute values,
    e.g. ``{"aged": "1"}`` for the long-term-change figures; ``gallery_where`` does the same for the gallery.
    ``gallery_sizes`` (non-empty) adds the banded rule with geometric verification at these gallery sizes
    (``geometry``: default :class:`GeometryParameters`), its queries run on ``workers`` threads.
    Embeddings and local features are cached in ``cache_dir`` (default ``out_dir``); plots are written into
    ``out_dir``. The report is returned, not written.
    """
    captures = read_dataset(Path(dataset_root), split=split)
    embedder = Embedder.load(checkpoint, device=device, num_threads=num_threads)
    cache_root = cache_dir if cache_dir is not None else out_dir
    cache = Path(cache_root) / EMBEDDINGS_CACHE if cache_root is not None else None

    query_index, gallery_index = query_gallery_indices(captures)
    query_index = [i for i in query_index if matches_attributes(captures[i], query_where)]
    gallery_index = [i for i in gallery_index if matches_attributes(captures[i], gallery_where)]
    if not query_index or not gallery_index:
        raise ValueError(
            f"no query captures match {dict(query_where or {})} or no gallery captures match "
            f"{dict(gallery_where or {})}"
        )
    # Only the captures a query or the gallery uses are embedded; the others stay NaN, never read.
    used = sorted({*query_index, *gallery_index})
    embeddings = np.full((len(captures), embedder.embedding_dim), np.nan, dtype=np.float32)
    embeddings[used] = embed_captures(
        embedder, [captures[i] for i in used], batch_size=batch_size, cache=cache
    )
    block, distances = block_level(captures, embeddings, query_index, gallery_index)

    pallet: PalletEvaluation | None = None
    verified: VerifiedEvaluation | None = None
    if all(c.position is not None for c in captures):
        gallery_cameras = sorted({captures[i].camera for i in gallery_index})
        protocol = build_open_set(
            captures,
            embeddings,
            gallery_cameras,
            unknown_fraction=unknown_fraction,
            seed=seed,
            query_where=query_where,
            gallery_where=gallery_where,
        )
        pallet = pallet_level(
            protocol,
            top_k=top_k,
            shortlist_size=shortlist_size,
            thresholds=thresholds,
            thresholds_source=thresholds_source,
            max_unknown_match_rate=max_unknown_match_rate,
            seed=seed,
        )
        if gallery_sizes:
            verified = verified_level(
                protocol,
                captures,
                gallery_sizes=gallery_sizes,
                thresholds=pallet.thresholds,
                geometry=geometry or GeometryParameters(),
                geometry_source=geometry_source,
                top_k=top_k,
                shortlist_size=shortlist_size,
                features_cache=Path(cache_root) / FEATURES_CACHE if cache_root is not None else None,
                workers=workers,
                vocabulary=load_vocabulary(checkpoint if checkpoint is not None else DEFAULT_CHECKPOINT),
            )
    else:
        logger.info("dataset has no block positions; skipping the pallet-level evaluation")

    plots: list[str] = []
    if out_dir is not None:
        plots = _write_plots(
            Path(out_dir),
            block,
            pallet,
            verified,
            block_pair_similarities(captures, query_index, gallery_index, distances),
        )
    return EvaluationReport(
        model_id=embedder.model_id,
        checkpoint=str(checkpoint) if checkpoint is not None else "default",
        dataset=str(dataset_root),
        num_captures=len(captures),
        block=block,
        pallet=pallet.report if pallet else None,
        verified=verified.report if verified else None,
        plots=plots,
    )


def _write_plots(
    out_dir: Path,
    block: BlockLevelReport,
    pallet: PalletEvaluation | None,
    verified: VerifiedEvaluation | None,
    block_pairs: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
) -> list[str]:
    from models.evaluation.plots import plot_cmc, plot_det, plot_inlier_histogram, plot_score_histogram

    written = [plot_cmc(block.cmc, out_dir / "cmc.png")]
    genuine_pairs, impostor_pairs = block_pairs
    block_threshold = pallet.thresholds.block_threshold if pallet else None
    written.append(
        plot_score_histogram(
            genuine_pairs,
            impostor_pairs,
            out_dir / "block_similarity_hist.png",
            threshold=block_threshold,
            threshold_label="block threshold",
            title="Block-pair cosine similarity",
            xlabel="cosine similarity (genuine: same block, impostor: other pallet)",
        )
    )
    if pallet is not None:
        scores = pallet_scores(pallet.neighbours)
        written.append(
            plot_score_histogram(
                scores.genuine,
                scores.impostor,
                out_dir / "pallet_score_hist.png",
                threshold=pallet.thresholds.score_threshold,
                threshold_label="score threshold",
                title="Pallet scores (verified: blocks paired one-to-one)",
                xlabel="pallet score (genuine: true pallet, impostor: best other pallet)",
            )
        )
        if pallet.report.num_unknown_queries and pallet.report.num_known_queries:
            curve = [
                (
                    p.score_threshold,
                    OpenSetFigures(
                        identification_rate=p.identification_rate,
                        false_reject_rate=p.false_reject_rate,
                        misidentification_rate=p.misidentification_rate,
                        unknown_registered_rate=p.unknown_registered_rate,
                        unknown_false_match_rate=p.unknown_false_match_rate,
                        num_known=pallet.report.num_known_queries,
                        num_unknown=pallet.report.num_unknown_queries,
                    ),
                )
                for p in pallet.report.sweep
            ]
            written.append(
                plot_det(curve, out_dir / "det.png", chosen_score_threshold=pallet.thresholds.score_threshold)
            )
    if verified is not None and verified.report.gallery_sizes:
        genuine, impostor = genuine_and_impostor_sums(verified.largest_gallery_outcomes)
        if genuine.size or impostor.size:
            written.append(
                plot_inlier_histogram(
                    genuine,
                    impostor,
                    out_dir / "inlier_hist.png",
                    match_inliers=verified.geometry.match_inliers,
                    review_inliers=verified.geometry.review_inliers,
                    title=f"Inliers summed over paired blocks, gallery of "
                    f"{verified.report.gallery_sizes[-1].gallery_pallets} pallets",
                )
            )
    return [p.name for p in written]
