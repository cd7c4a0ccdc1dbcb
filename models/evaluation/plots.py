"""Evaluation plots written as PNG files (matplotlib's Agg canvas, no display needed)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.evaluation.open_set import OpenSetFigures

logger = logging.getLogger(__name__)

_DPI = 120


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    logger.info("wrote %s", path)
    return path


def plot_cmc(cmc: npt.ArrayLike, path: Path, *, max_rank: int = 20, title: str = "Block-level CMC") -> Path:
    """CMC curve: share of queries whose true identity appears within the first r gallery entries."""
    values = np.asarray(cmc, dtype=np.float64)[:max_rank]
    ranks = np.arange(1, len(values) + 1)
    figure = Figure(figsize=(5, 4))
    axes = figure.add_subplot()
    axes.plot(ranks, values, marker="o", markersize=3)
    axes.set(
        xlabel="rank",
        ylabel="identification rate",
        title=title,
        ylim=(0.0, 1.02),
        xlim=(1, max(len(values), 2)),
    )
    axes.grid(True, alpha=0.3)
    return _save(figure, path)


def plot_det(
    curve: Sequence[tuple[float, OpenSetFigures]],
    path: Path,
    *,
    chosen_score_threshold: float | None = None,
    title: str = "Pallet-level DET",
) -> Path:
    """DET curve over the score threshold: unknown pallets matched vs known pallets not identified (log axes).

    Rates of zero cannot be drawn on log axes, so they are drawn at half of one query's share (1 / (2 n)).
    """
    if not curve:
        raise ValueError("empty curve")
    num_known, num_unknown = curve[0][1].num_known, curve[0][1].num_unknown
    floor_x = 0.5 / max(num_unknown, 1)
    floor_y = 0.5 / max(num_known, 1)
    thresholds = np.array([t for t, _ in curve])
    false_match = np.array([f.unknown_false_match_rate for _, f in curve])
    false_non_match = np.array([1.0 - f.identification_rate for _, f in curve])
    x, y = np.maximum(false_match, floor_x), np.maximum(false_non_match, floor_y)
    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    axes.plot(x, y, drawstyle="steps-post", label="score-threshold sweep")
    if chosen_score_threshold is not None:
        index = int(np.argmin(np.abs(thresholds - chosen_score_threshold)))
        axes.plot(x[index], y[index], "o", color="tab:red", label=f"chosen threshold {thresholds[index]:.3f}")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set(
        xlabel=f"unknown pallets wrongly matched (n={num_unknown})",
        ylabel=f"known pallets not identified (n={num_known})",
        title=title,
        xlim=(floor_x * 0.8, 1.05),
        ylim=(floor_y * 0.8, 1.05),
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper right", fontsize="small")
    return _save(figure, path)


def plot_score_histogram(
    genuine: npt.ArrayLike,
    impostor: npt.ArrayLike,
    path: Path,
    *,
    threshold: float | None,
    title: str,
    xlabel: str,
    threshold_label: str = "threshold",
) -> Path:
    """Density histograms of genuine and impostor scores with the decision threshold marked."""
    genuine_values = np.asarray(genuine, dtype=np.float64)
    impostor_values = np.asarray(impostor, dtype=np.float64)
    everything = np.concatenate([genuine_values, impostor_values])
    if everything.size == 0:
        raise ValueError("no scores to plot")
    low, high = float(everything.min()), float(everything.max())
    bins = np.linspace(low, high if high > low else low + 1e-3, 60).tolist()
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for values, label, colour in (
        (genuine_values, "genuine", "tab:green"),
        (impostor_values, "impostor", "tab:red"),
    ):
        if values.size:
            axes.hist(
                values, bins=bins, density=True, alpha=0.5, color=colour, label=f"{label} (n={values.size})"
            )
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", label=f"{threshold_label} {threshold:.3f}")
    axes.set(xlabel=xlabel, ylabel="density", title=title)
    axes.legend(fontsize="small")
    return _save(figure, path)


def plot_inlier_histogram(
    genuine: npt.ArrayLike,
    impostor: npt.ArrayLike,
    path: Path,
    *,
    match_inliers: int,
    review_inliers: int,
    title: str,
) -> Path:
    """Counts of summed inliers, genuine (true pallet) vs impostor (best other pallet), bands marked.

    Log counts: impostors pile up near zero and the tails, where the bands sit, would vanish otherwise.
    """
    genuine_values = np.asarray(genuine, dtype=np.float64)
    impostor_values = np.asarray(impostor, dtype=np.float64)
    everything = np.concatenate([genuine_values, impostor_values])
    if everything.size == 0:
        raise ValueError("no inlier counts to plot")
    high = max(float(everything.max()), float(match_inliers)) * 1.05 + 1
    bins = np.linspace(0.0, high, 70).tolist()
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for values, label, colour in (
        (genuine_values, "genuine: true pallet", "tab:green"),
        (impostor_values, "impostor: best other pallet", "tab:red"),
    ):
        if values.size:
            axes.hist(values, bins=bins, alpha=0.55, color=colour, label=f"{label} (n={values.size})")
    axes.axvline(review_inliers, color="tab:orange", linestyle=":", label=f"review >= {review_inliers}")
    axes.axvline(match_inliers, color="black", linestyle="--", label=f"matched >= {match_inliers}")
    axes.set_yscale("log")
    axes.set(xlabel="inliers summed over the paired blocks", ylabel="queries", title=title)
    axes.legend(fontsize="small")
    return _save(figure, path)
