"""The evaluation report: its schema, JSON output and the human-readable summary.

See ``docs/evaluation.md`` for the precise meaning of every reported number.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.evaluation.open_set import OpenSetFigures
from models.evaluation.verified import GallerySizeFigures

REPORT_FILE = "report.json"
THRESHOLDS_FILE = "thresholds.json"


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
class VerifiedLevelReport:
    """The service's banded rule (network stage, then geometric verification) per gallery size."""

    geometry: dict[str, Any]
    """The geometric stage's parameters used (``GeometryParameters`` as JSON)."""
    geometry_source: str
    network_thresholds: dict[str, float | int]
    """The network stage's thresholds (they give the network-only figures)."""
    top_k: int
    shortlist_size: int
    captures_per_pallet: int
    """Stored captures per gallery pallet (the receipt): the service may hold more per pallet."""
    neighbour_search: str
    gallery_sizes: list[GallerySizeFigures]
    features_extracted: int
    """Images whose local features this run extracted (the rest came from the cache)."""
    features_from_cache: int
    vocabulary_id: str | None = None
    """The visual-word vocabulary of the word stage (``None``: the stage did not run)."""


@dataclass(frozen=True)
class EvaluationReport:
    model_id: str
    checkpoint: str
    dataset: str
    num_captures: int
    block: BlockLevelReport
    pallet: PalletLevelReport | None
    verified: VerifiedLevelReport | None = None
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


def sweep_point(score_threshold: float, figures: OpenSetFigures) -> SweepPoint:
    return SweepPoint(
        score_threshold=score_threshold,
        identification_rate=figures.identification_rate,
        false_reject_rate=figures.false_reject_rate,
        misidentification_rate=figures.misidentification_rate,
        unknown_registered_rate=figures.unknown_registered_rate,
        unknown_false_match_rate=figures.unknown_false_match_rate,
    )


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
    if report.verified is not None:
        lines += ["", *format_verified(report.verified)]
    return "\n".join(lines)


def format_verified(verified: VerifiedLevelReport) -> list[str]:
    """The banded rule per gallery size next to the network stage alone."""
    g = verified.geometry
    lines = [
        f"verified rule (geometry {verified.geometry_source}: matched >= {g['match_inliers']} inliers, "
        f"{g['match_blocks']} blocks >= {g['block_inliers']}, margin {g['min_margin']}; "
        f"review >= {g['review_inliers']}; {g['candidates_checked']} candidates checked)",
        "  gallery | known: identified  wrong  review    new | unknown: matched  review     new "
        "| network only: known identified, unknown matched",
    ]
    for size in verified.gallery_sizes:
        r = size.rates
        lines.append(
            f"  {size.gallery_pallets:7d} | {size.known_queries:5d} {_pct(r['known_identified'])} "
            f"{_pct(r['known_wrong_match'])} {_pct(r['known_review'])} {_pct(r['known_new'])} "
            f"| {size.unknown_queries:4d} {_pct(r['unknown_matched'])} {_pct(r['unknown_review'])} "
            f"{_pct(r['unknown_new'])} "
            f"| {_pct(r['network_known_identified'])} {_pct(r['network_unknown_matched'])}"
        )
    largest = verified.gallery_sizes[-1].inliers if verified.gallery_sizes else None
    if largest is not None:
        genuine, impostor = largest["genuine"], largest["impostor"]
        runner_up, unknown = largest["runner_up"], largest["unknown_best"]
        lines.append(
            f"  inliers at the largest gallery: genuine p1 {genuine['p1']} / median {genuine['median']}; "
            f"best impostor p99.9 {impostor['p99_9']} / max {impostor['max']}; "
            f"runner-up p99.9 {runner_up['p99_9']} / max {runner_up['max']}; "
            f"unknown best p99.9 {unknown['p99_9']} / max {unknown['max']}"
        )
    if verified.gallery_sizes:
        lines.append(
            "  unknown queries whose best candidate reached the review sum / of them with the match band's "
            "blocks / margin / both / its sum: "
            + "; ".join(
                f"gallery {size.gallery_pallets}: "
                + "/".join(map(str, size.unknown_band_conditions.values()))
                for size in verified.gallery_sizes
            )
        )
    return lines


def _pct(value: float | int) -> str:
    return "    n/a" if math.isnan(value) else f"{value:7.2%}"
