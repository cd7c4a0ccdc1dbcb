"""Cheap procedural fields and materials for side views: noise, sawn boards, end grain, corrugation."""

from __future__ import annotations

import math

import cv2
import numpy as np

FloatArray = np.ndarray


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], cell_y: float, cell_x: float
) -> FloatArray:
    """Band-limited noise with unit standard deviation: a coarse random grid resized bicubically."""
    height, width = max(1, shape[0]), max(1, shape[1])
    coarse = rng.standard_normal((int(height / cell_y) + 3, int(width / cell_x) + 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def fine_noise(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    return rng.standard_normal(shape).astype(np.float32)


def colour(rgb: tuple[float, float, float], shape: tuple[int, int]) -> FloatArray:
    return np.broadcast_to(np.asarray(rgb, np.float32), (*shape, 3)).copy()


def sawn_board(
    rng: np.random.Generator, shape: tuple[int, int], tone: FloatArray, scale: float
) -> FloatArray:
    """The side of a sawn board: grain lines along its length, mottling, sometimes a knot.

    ``scale`` is pixels per millimetre; ``tone`` the board's mean colour.
    """
    rows, cols = shape
    period = rng.uniform(2.5, 6.0) * scale + 0.5
    bend = smooth_noise(rng, shape, max(2.0, rows), max(4.0, 90 * scale)) * rng.uniform(0.5, 2.0)
    y = np.arange(rows, dtype=np.float32)[:, None]
    grain = np.sin(2 * math.pi * (y / period + bend))
    streaks = smooth_noise(rng, shape, max(1.0, 1.2 * scale), max(4.0, 60 * scale))
    mottle = smooth_noise(rng, shape, max(2.0, 30 * scale), max(4.0, 120 * scale))
    shade = 1.0 - 0.07 * grain - 0.05 * streaks - 0.06 * mottle + 0.02 * fine_noise(rng, shape)
    board = tone[None, None, :] * shade[..., None]
    for _ in range(int(rng.poisson(0.4 * cols / max(1.0, 600 * scale)))):
        cx, cy = rng.uniform(0, cols), rng.uniform(0, rows)
        axes = (max(1, int(rng.uniform(4, 12) * scale)), max(1, int(rng.uniform(2, 6) * scale)))
        knot: FloatArray = np.zeros(shape, np.float32)
        cv2.ellipse(knot, (int(cx), int(cy)), axes, 0.0, 0.0, 360.0, 1.0, -1)
        knot = cv2.GaussianBlur(knot, (0, 0), max(0.5, scale))
        board *= (1.0 - 0.45 * knot)[..., None]
    return board.astype(np.float32)


def end_grain(rng: np.random.Generator, shape: tuple[int, int], tone: FloatArray, scale: float) -> FloatArray:
    """The end of a board: growth rings around a pith below or beside it, and saw marks."""
    rows, cols = shape
    cx = rng.uniform(-0.5, 1.5) * cols
    cy = rows + rng.uniform(0.5, 4.0) * rows
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    radius = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    rings = np.sin(2 * math.pi * radius / (rng.uniform(2.0, 5.0) * scale + 0.5))
    saw = np.sin(2 * math.pi * (x * 0.3 + y) / (rng.uniform(1.5, 3.0) * scale + 0.5))
    shade = 0.9 - 0.08 * rings - 0.04 * saw - 0.05 * smooth_noise(rng, shape, 8 * scale + 1, 8 * scale + 1)
    return (tone[None, None, :] * shade[..., None]).astype(np.float32)


def wood_tone(rng: np.random.Generator) -> FloatArray:
    """A pallet's board colour: fresh pine to weathered grey."""
    fresh = np.array([0.80, 0.64, 0.43], np.float32) * rng.uniform(0.75, 1.1)
    grey = np.array([0.52, 0.5, 0.46], np.float32) * rng.uniform(0.7, 1.05)
    weathering = rng.uniform(0.0, 0.8) ** 1.5
    return np.asarray((1 - weathering) * fresh + weathering * grey, np.float32)
