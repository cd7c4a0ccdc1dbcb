"""What a training run leaves for people: the per-step history as CSV and the training curve as PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    if not history:
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_training_curve(history: list[dict[str, float]], path: Path) -> None:
    """Loss terms and batch accuracy vs step (moving averages), as a PNG."""
    if not history:
        return
    steps = np.array([row["step"] for row in history])
    window = max(1, len(history) // 50)
    figure = Figure(figsize=(8, 6))
    loss_axis, accuracy_axis = figure.subplots(2, 1, sharex=True)
    for key in ("loss", "cross_entropy", "triplet"):
        values = _smooth(np.array([row[key] for row in history]), window)
        loss_axis.plot(steps[len(steps) - len(values) :], values, label=key)
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    loss_axis.grid(alpha=0.3)
    accuracy = _smooth(np.array([row["accuracy"] for row in history]), window)
    accuracy_axis.plot(steps[len(steps) - len(accuracy) :], accuracy, color="tab:green")
    accuracy_axis.set_ylabel("batch accuracy")
    accuracy_axis.set_xlabel("step")
    accuracy_axis.set_ylim(0, 1)
    accuracy_axis.grid(alpha=0.3)
    figure.suptitle(f"PCB training ({len(history)} steps, moving average over {window})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
