"""End-to-end evaluation of a checkpoint on a capture dataset: block-level ranking and pallet-level open set.

See ``docs/evaluation.md`` for the precise meaning of every reported number.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from tqdm import tqdm

from models.data import Capture, read_dataset, split_query_gallery
from models.inference import Embedder
from models.metrics import (
    DEFAULT_MAX_UNKNOWN_MATCH_RATE,
    DEFAULT_SCORE_THRESHOLDS,
    DEFAULT_TOP_K,
    OpenSetFigures,
    PalletGallery,
    PalletQuery,
    QueryNeighbours,
    choose_thresholds,
    cosine_distance_matrix,
    decide_all,
    evaluate_rank,
    find_neighbours,
    one_pallet_gallery_neighbours,
    open_set_figures,
    pallet_scores,
    sweep_thresholds,
)
from models.voting import DEFAULT_SHORTLIST_SIZE, VotingThresholds

logger = logging.getLogger(__name__)

EMBEDDINGS_CACHE = "embeddings.npz"
REPORT_FILE = "report.json"
THRESHOLDS_FILE = "thresholds.json"
CMC_RANKS = (1, 5, 10)


@dataclass(frozen=True)
class BlockLevelReport:
    """Closed-set ranking of block captures: queries from one camera against a gallery from the others."""

    rank1: float
    rank5: float
    rank10: float
    mean_average_precision: float
    num_queries: int
    num_valid_queries: int
    num_gallery: int
    num_identities: int
    cmc: list[float]


@dataclass(frozen=True)
class SweepPoint:
    score_threshold: float
    identification_rate: float
    false_reject_rate: float
    misidentification_rate: float
    unknown_registered_rate: float
    unknown_false_match_rate: float


@dataclass(frozen=True)
class PalletLevelReport:
    """Open-set pallet identification with the service's voting rule."""

    top_k: int
    shortlist_size: int
    num_known_pallets: int
    num_unknown_pallets: int
    num_known_queries: int
    num_unknown_queries: int
    gallery_cameras: list[str]
    query_cameras: list[str]
    thresholds: dict[str, float | int]
    thresholds_source: str
    at_thresholds: dict[str, float | int]
    calibration: dict[str, Any] | None
    sweep: list[SweepPoint]
    one_pallet_gallery_false_match_rate: float
    """Unknown queries wrongly matched when the gallery holds one single other pallet (a new deployment)."""
    num_one_pallet_gallery_trials: int


@dataclass(frozen=True)
class EvaluationReport:
    model_id: str
    checkpoint: str
    dataset: str
    num_captures: int
    block: BlockLevelReport
    pallet: PalletLevelReport | None
    plots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; undefined rates (NaN, e.g. no unknown pallets) become ``None``."""
        result: dict[str, Any] = _nan_to_none(asdict(self))
        return result

    def write_json(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return value


# ----------------------------------------------------------------------------------------------------


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def embed_captures(
    embedder: Embedder,
    captures: Sequence[Capture],
    *,
    batch_size: int = 32,
    cache: Path | None = None,
) -> npt.NDArray[np.float32]:
    """Fingerprints of all captures, reusing ``cache`` (.npz) when it holds the same model and files."""
    paths = np.array([str(c.path) for c in captures])
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if str(stored["model_id"]) == embedder.model_id and np.array_equal(stored["paths"], paths):
                logger.info("reusing embeddings from %s", cache)
                return np.asarray(stored["embeddings"], dtype=np.float32)
        logger.info("embedding cache %s is for another model or dataset; recomputing", cache)
    embeddings = np.empty((len(captures), embedder.embedding_dim), dtype=np.float32)
    with tqdm(total=len(captures), desc="embedding", unit="img") as progress:
        for start in range(0, len(captures), batch_size):
            batch = captures[start : start + batch_size]
            embeddings[start : start + len(batch)] = embedder.embed(
                [load_rgb(c.path) for c in batch], batch_size
            )
            progress.update(len(batch))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, model_id=np.array(embedder.model_id), paths=paths, embeddings=embeddings)
    return embeddings


def block_level(
    captures: Sequence[Capture],
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
    captures: Sequence[Capture],
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


# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenSetProtocol:
    """Gallery and queries of the pallet-level open-set evaluation."""

    gallery: PalletGallery
    queries: list[PalletQuery]
    known_pallets: list[str]
    unknown_pallets: list[str]
    gallery_cameras: list[str]
    query_cameras: list[str]


def split_unknown_pallets(pallets: Sequence[str], unknown_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic known / unknown split: the last ``round(fraction * n)`` pallets (sorted) are unknown.

    At least one pallet stays known.
    """
    if not 0.0 <= unknown_fraction < 1.0:
        raise ValueError("unknown_fraction must lie in [0, 1)")
    ordered = sorted(set(pallets))
    num_unknown = min(round(unknown_fraction * len(ordered)), len(ordered) - 1)
    cut = len(ordered) - num_unknown
    return ordered[:cut], ordered[cut:]


def build_open_set(
    captures: Sequence[Capture],
    embeddings: npt.NDArray[np.float32],
    gallery_cameras: Sequence[str],
    *,
    unknown_fraction: float,
    seed: int = 0,
    query_where: Mapping[str, str] | None = None,
    gallery_where: Mapping[str, str] | None = None,
) -> OpenSetProtocol:
    """Receipt gallery and dispatch queries from a dataset with pallet / block structure.

    A *capture event* is all block captures of one pallet with the same camera and frame. Gallery: the first
    event (by frame) of every known pallet on a gallery camera. Queries: every event of every pallet (known
    and unknown) on the other cameras, with the block order shuffled. Unknown pallets have no gallery entry.
    ``query_where`` / ``gallery_where`` keep only query / gallery events whose captures carry these attribute
    values (e.g. ``aged=1``).
    """
    events: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for index, capture in enumerate(captures):
        events[(capture.pallet, capture.camera, capture.frame)].append(index)
    known, unknown = split_unknown_pallets([c.pallet for c in captures], unknown_fraction)
    known_set = set(known)
    gallery_set = set(gallery_cameras)

    gallery_rows: list[int] = []
    gallery_pallets: list[str] = []
    registered: set[str] = set()
    for (pallet, camera, _frame), rows in sorted(events.items()):
        if (
            pallet in known_set
            and camera in gallery_set
            and pallet not in registered
            and all(matches_attributes(captures[row], gallery_where) for row in rows)
        ):
            registered.add(pallet)
            gallery_rows.extend(rows)
            gallery_pallets.extend([pallet] * len(rows))
    missing = sorted(known_set - registered)
    if missing:
        logger.warning(
            "%d known pallets have no gallery capture and are left out: %s", len(missing), missing[:5]
        )
    known = [p for p in known if p in registered]

    rng = np.random.default_rng(seed)
    queries: list[PalletQuery] = []
    query_cameras: set[str] = set()
    for (pallet, camera, _frame), rows in sorted(events.items()):
        if camera in gallery_set or (pallet in known_set and pallet not in registered):
            continue
        if not all(matches_attributes(captures[row], query_where) for row in rows):
            continue
        query_cameras.add(camera)
        shuffled = np.asarray(rows)[rng.permutation(len(rows))]
        queries.append(
            PalletQuery(pallet=pallet, known=pallet in registered, embeddings=embeddings[shuffled])
        )
    return OpenSetProtocol(
        gallery=PalletGallery(
            embeddings=embeddings[gallery_rows].astype(np.float64), pallets=tuple(gallery_pallets)
        ),
        queries=queries,
        known_pallets=known,
        unknown_pallets=unknown,
        gallery_cameras=sorted(gallery_set),
        query_cameras=sorted(query_cameras),
    )


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
        sweep=[_sweep_point(t, f) for t, f in curve],
        one_pallet_gallery_false_match_rate=float(np.mean(one_pallet_matches))
        if one_pallet_matches
        else math.nan,
        num_one_pallet_gallery_trials=len(one_pallet_matches),
    )
    return PalletEvaluation(report=report, neighbours=neighbours, thresholds=thresholds)


def _sweep_point(score_threshold: float, figures: OpenSetFigures) -> SweepPoint:
    return SweepPoint(
        score_threshold=score_threshold,
        identification_rate=figures.identification_rate,
        false_reject_rate=figures.false_reject_rate,
        misidentification_rate=figures.misidentification_rate,
        unknown_registered_rate=figures.unknown_registered_rate,
        unknown_false_match_rate=figures.unknown_false_match_rate,
    )


# ----------------------------------------------------------------------------------------------------


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
) -> EvaluationReport:
    """Embed ``dataset_root`` with ``checkpoint`` (None: the shipped one) and measure it.

    ``split`` keeps only the rows of that split. ``thresholds=None`` calibrates the voting thresholds on this
    data (optimistic figures; use held-out data with the calibrated thresholds for honest ones).
    ``query_where`` restricts the queries (block and pallet level) to captures with these attribute values,
    e.g. ``{"aged": "1"}`` for the long-term-change figures; ``gallery_where`` does the same for the gallery.
    With
    ``out_dir``, the embeddings are cached there and the plots written into it; the report is returned, not
    written.
    """
    captures = read_dataset(Path(dataset_root), split=split)
    embedder = Embedder.load(checkpoint, device=device, num_threads=num_threads)
    cache = Path(out_dir) / EMBEDDINGS_CACHE if out_dir is not None else None
    embeddings = embed_captures(embedder, captures, batch_size=batch_size, cache=cache)

    query_index, gallery_index = _split_indices(captures)
    query_index = [i for i in query_index if matches_attributes(captures[i], query_where)]
    gallery_index = [i for i in gallery_index if matches_attributes(captures[i], gallery_where)]
    if not query_index or not gallery_index:
        raise ValueError(
            f"no query captures match {dict(query_where or {})} or no gallery captures match "
            f"{dict(gallery_where or {})}"
        )
    block, distances = block_level(captures, embeddings, query_index, gallery_index)

    pallet: PalletEvaluation | None = None
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
    else:
        logger.info("dataset has no block positions; skipping the pallet-level evaluation")

    plots: list[str] = []
    if out_dir is not None:
        plots = _write_plots(
            Path(out_dir),
            block,
            pallet,
            block_pair_similarities(captures, query_index, gallery_index, distances),
        )
    return EvaluationReport(
        model_id=embedder.model_id,
        checkpoint=str(checkpoint) if checkpoint is not None else "default",
        dataset=str(dataset_root),
        num_captures=len(captures),
        block=block,
        pallet=pallet.report if pallet else None,
        plots=plots,
    )


def matches_attributes(capture: Capture, required: Mapping[str, str] | None) -> bool:
    """Whether the capture's metadata attributes carry every required value (no requirement: always)."""
    return not required or all(capture.attributes.get(key) == value for key, value in required.items())


def _split_indices(captures: Sequence[Capture]) -> tuple[list[int], list[int]]:
    position = {id(c): i for i, c in enumerate(captures)}
    query, gallery = split_query_gallery(list(captures))
    return [position[id(c)] for c in query], [position[id(c)] for c in gallery]


def _write_plots(
    out_dir: Path,
    block: BlockLevelReport,
    pallet: PalletEvaluation | None,
    block_pairs: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
) -> list[str]:
    from models.plots import plot_cmc, plot_det, plot_score_histogram

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
    return [p.name for p in written]


def format_summary(report: EvaluationReport) -> str:
    """A short human-readable table of the headline numbers."""
    block = report.block
    lines = [
        f"model {report.model_id} on {report.dataset} ({report.num_captures} captures)",
        "",
        "block level (query camera vs gallery camera)",
        f"  rank-1 {block.rank1:7.2%}   rank-5 {block.rank5:7.2%}   rank-10 {block.rank10:7.2%}   "
        f"mAP {block.mean_average_precision:7.2%}",
        f"  {block.num_valid_queries}/{block.num_queries} queries, {block.num_gallery} gallery, "
        f"{block.num_identities} identities",
    ]
    if report.pallet is not None:
        pallet = report.pallet
        figures = pallet.at_thresholds
        t = pallet.thresholds
        lines += [
            "",
            f"pallet level (top-{pallet.top_k}, {pallet.shortlist_size} verified; "
            f"thresholds {pallet.thresholds_source}: "
            f"block {t['block_threshold']:.3f}, votes {t['min_votes']}, score {t['score_threshold']:.3f})",
            f"  known   ({pallet.num_known_queries:4d} queries of {pallet.num_known_pallets} pallets): "
            f"identified {_pct(figures['identification_rate'])}  "
            f"rejected {_pct(figures['false_reject_rate'])}  "
            f"wrong pallet {_pct(figures['misidentification_rate'])}",
            f"  unknown ({pallet.num_unknown_queries:4d} queries of {pallet.num_unknown_pallets} pallets): "
            f"registered {_pct(figures['unknown_registered_rate'])}  "
            f"wrongly matched {_pct(figures['unknown_false_match_rate'])}",
            f"  unknown vs a one-pallet gallery ({pallet.num_one_pallet_gallery_trials} trials): "
            f"wrongly matched {_pct(pallet.one_pallet_gallery_false_match_rate)}",
        ]
    return "\n".join(lines)


def _pct(value: float | int) -> str:
    return "    n/a" if math.isnan(value) else f"{value:7.2%}"
