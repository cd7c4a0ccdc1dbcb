"""The plane of a pallet side as an RGBA raster: boards, block faces, fork openings, load and what covers it.

Block faces are the families' own blocks (``SynthFamily.new_block``/``aged_block`` for the same seed, pallet
index and position), so a side view and a crop dataset with the same seed and capture size share their
blocks. The raster is drawn in plane millimetres times ``scale`` (pixels per millimetre) with an origin
``(origin_x, origin_y)`` so that the load above the pallet and overhangs fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from models.synth.families.chipsplat import BlockTexture
from models.synth.families.flakepress import PressedBlock
from models.synth.sides import geometry as geo
from models.synth.sides.textures import end_grain, sawn_board, smooth_noise, wood_tone

FloatArray = np.ndarray


def block_face(block: Any) -> FloatArray:
    """The face of a family's rendered block (float RGB in [0, 1], without its surroundings).

    ``flakepress`` faces get their relief as a soft raking-light shading, as a side view would show it.
    """
    if isinstance(block, BlockTexture):
        x0, y0, x1, y1 = (round(value) for value in block.face_box)
        return np.asarray(block.reflectance[y0:y1, x0:x1], np.float32)
    if isinstance(block, PressedBlock):
        x0, y0, x1, y1 = (round(value) for value in block.face)
        albedo = block.albedo[y0:y1, x0:x1]
        slope_y, slope_x = np.gradient(block.height[y0:y1, x0:x1])
        shade = np.clip(1.0 + 0.5 * slope_x - 0.35 * slope_y, 0.6, 1.3)
        return np.asarray(np.clip(albedo * shade[..., None], 0.0, 1.0), np.float32)
    raise TypeError(f"no block face for {type(block).__name__}")


@dataclass(frozen=True, slots=True)
class PlaneRaster:
    """RGBA raster of the side plane; ``cover`` marks pixels hidden by straps and forks (for visibility)."""

    rgba: FloatArray  # float32 (rows, cols, 4)
    cover: FloatArray  # float32 (rows, cols) in [0, 1]
    scale: float  # pixels per millimetre
    origin: tuple[float, float]  # plane millimetres of raster pixel (0, 0)

    def to_pixels(self, x: float, y: float) -> tuple[int, int]:
        return round((x - self.origin[0]) * self.scale), round((y - self.origin[1]) * self.scale)

    def raster_to_plane(self) -> np.ndarray:
        """3x3 matrix mapping raster pixels to plane millimetres."""
        return np.array(
            [[1 / self.scale, 0.0, self.origin[0]], [0.0, 1 / self.scale, self.origin[1]], [0.0, 0.0, 1.0]]
        )


class PlaneCanvas:
    """Mutable drawing state of one raster (pixel helpers in plane millimetres)."""

    def __init__(self, scale: float, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.scale = scale
        self.origin = (x_range[0], y_range[0])
        cols = math.ceil((x_range[1] - x_range[0]) * scale)
        rows = math.ceil((y_range[1] - y_range[0]) * scale)
        self.rgb = np.zeros((rows, cols, 3), np.float32)
        self.alpha = np.zeros((rows, cols), np.float32)
        self.cover = np.zeros((rows, cols), np.float32)

    def to_pixels(self, x: float, y: float) -> tuple[int, int]:
        return round((x - self.origin[0]) * self.scale), round((y - self.origin[1]) * self.scale)

    def window(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
        rows, cols = self.alpha.shape
        c0 = min(cols, max(0, round((x0 - self.origin[0]) * self.scale)))
        c1 = min(cols, max(c0, round((x1 - self.origin[0]) * self.scale)))
        r0 = min(rows, max(0, round((y0 - self.origin[1]) * self.scale)))
        r1 = min(rows, max(r0, round((y1 - self.origin[1]) * self.scale)))
        return slice(r0, r1), slice(c0, c1)

    @staticmethod
    def shape_of(window: tuple[slice, slice]) -> tuple[int, int]:
        return window[0].stop - window[0].start, window[1].stop - window[1].start

    def paint(
        self, rect: tuple[float, float, float, float], pixels: FloatArray, opacity: float = 1.0
    ) -> None:
        window = self.window(*rect)
        rows, cols = self.shape_of(window)
        if rows == 0 or cols == 0:
            return
        patch = pixels if pixels.shape[:2] == (rows, cols) else cv2.resize(pixels, (cols, rows))
        self.rgb[window] = self.rgb[window] * (1 - opacity) + patch * opacity
        self.alpha[window] = np.maximum(self.alpha[window], opacity)

    def finish(self) -> PlaneRaster:
        rgba = np.concatenate([np.clip(self.rgb, 0.0, 1.0), self.alpha[..., None]], axis=2)
        return PlaneRaster(rgba.astype(np.float32), self.cover, self.scale, self.origin)


def _bevel(shape: tuple[int, int], width: float, strength: float) -> FloatArray:
    """Multiplicative darkening within ``width`` pixels of a rectangle's border (a chamfer in shadow)."""
    rows, cols = shape
    y = np.arange(rows, dtype=np.float32)[:, None]
    x = np.arange(cols, dtype=np.float32)[None, :]
    inside = np.minimum(np.minimum(x, cols - 1 - x), np.minimum(y, rows - 1 - y))
    return 1.0 - strength * np.exp(-inside / max(0.5, width))


def _nail_heads(
    canvas: PlaneCanvas, rng: np.random.Generator, rect: tuple[float, float, float, float]
) -> None:
    x0, y0, x1, y1 = rect
    for _ in range(int(rng.poisson(2.0 * (x1 - x0) / geo.LENGTH))):
        cx, cy = rng.uniform(x0 + 8, x1 - 8), rng.uniform(y0 + 6, y1 - 6)
        radius = rng.uniform(2.5, 4.5) * canvas.scale
        col, row = canvas.to_pixels(cx, cy)
        grey = float(rng.uniform(0.2, 0.6))
        rust = rng.uniform(0.0, 0.5)
        tint = (grey * (1 + 0.4 * rust), grey, grey * (1 - 0.4 * rust))
        cv2.circle(canvas.rgb, (col, row), max(1, round(radius)), tint, -1, lineType=cv2.LINE_AA)


def draw_pallet(canvas: PlaneCanvas, rng: np.random.Generator, faces: list[FloatArray]) -> None:
    """Boards, block faces (left to right), gaps, chamfers, nail heads and the fork openings' insides."""
    scale = canvas.scale
    tone = wood_tone(rng)
    dirt = rng.uniform(0.0, 0.35)

    def board(rect: tuple[float, float, float, float], end: bool = False) -> None:
        window = canvas.window(*rect)
        shape = canvas.shape_of(window)
        if min(shape) == 0:
            return
        own = tone * rng.uniform(0.88, 1.12, 3).astype(np.float32) ** 0.3 * rng.uniform(0.85, 1.1)
        texture = end_grain(rng, shape, own, scale) if end else sawn_board(rng, shape, own, scale)
        texture *= _bevel(shape, 1.5 * scale, rng.uniform(0.2, 0.45))[..., None]
        grime = np.clip(smooth_noise(rng, shape, 20 * scale + 1, 40 * scale + 1), 0, 2)
        texture *= (1 - dirt * grime)[..., None]
        canvas.paint(rect, texture)

    # fork openings first: everything else is drawn over their borders
    for left, right in (
        (geo.BLOCK_WIDTH, geo.BLOCK_LEFTS[1]),
        (geo.BLOCK_LEFTS[1] + geo.BLOCK_WIDTH, geo.BLOCK_LEFTS[2]),
    ):
        _opening(canvas, rng, (left, geo.BOARD, right, geo.BLOCK_BOTTOM))
    board((0.0, 0.0, geo.LENGTH, geo.BOARD))
    board((0.0, geo.BLOCK_BOTTOM, geo.LENGTH, geo.HEIGHT))
    gap = rng.uniform(0.0, 3.0)
    for index, face in enumerate(faces):
        x0, y0, x1, y1 = geo.block_rect(index)
        board((x0 + rng.uniform(-3, 3), geo.BOARD + gap, x1 + rng.uniform(-3, 3), y0 - gap * 0.5), end=True)
        window = canvas.window(x0, y0, x1, y1)
        shape = canvas.shape_of(window)
        if min(shape) == 0:
            continue
        pixels = cv2.resize(face, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
        pixels *= _bevel(shape, 2.0 * scale, rng.uniform(0.1, 0.35))[..., None]
        canvas.paint((x0, y0, x1, y1), pixels)
    # shadow gaps between boards and blocks
    for y in (geo.BOARD, geo.BLOCK_TOP, geo.BLOCK_BOTTOM):
        window = canvas.window(0.0, y - 0.6, geo.LENGTH, y + 0.6 + gap * 0.5)
        canvas.rgb[window] *= rng.uniform(0.25, 0.6)
    _nail_heads(canvas, rng, (0.0, 0.0, geo.LENGTH, geo.BOARD))
    _nail_heads(canvas, rng, (0.0, geo.BLOCK_BOTTOM, geo.LENGTH, geo.HEIGHT))
    # chamfered ends of the bottom board
    chamfer = rng.uniform(4.0, 12.0)
    for end in (0.0, geo.LENGTH):
        corner = [
            canvas.to_pixels(end, geo.HEIGHT - chamfer),
            canvas.to_pixels(end, geo.HEIGHT),
            canvas.to_pixels(end + (chamfer if end == 0.0 else -chamfer), geo.HEIGHT),
        ]
        cv2.fillPoly(canvas.alpha, [np.array(corner, np.int32)], 0.0)


def _opening(canvas: PlaneCanvas, rng: np.random.Generator, rect: tuple[float, float, float, float]) -> None:
    """A fork opening: dark inside, the far side's light, sometimes a middle block beside a near one."""
    window = canvas.window(*rect)
    rows, cols = canvas.shape_of(window)
    if rows == 0 or cols == 0:
        return
    darkness = rng.uniform(0.02, 0.14)
    y = np.linspace(0, 1, rows, dtype=np.float32)[:, None]
    inside: FloatArray = darkness * (0.7 + 0.6 * y) * (1 + 0.25 * smooth_noise(rng, (rows, cols), 6, 6))
    inside = np.repeat(inside[..., None], 3, axis=2) * np.array([1.0, 0.95, 0.9], np.float32)
    if rng.random() < 0.7:  # light through the far side
        fx0, fx1 = sorted(rng.uniform(0.1, 0.9, 2) * cols)
        fy0, fy1 = int(rows * rng.uniform(0.15, 0.4)), int(rows * rng.uniform(0.7, 0.9))
        inside[fy0:fy1, int(fx0) : int(fx1)] += rng.uniform(0.05, 0.45) * rng.uniform(0.8, 1.2, 3)
    if rng.random() < 0.4:  # a middle-row block, deep and dim, beside one of the near blocks
        share = int(cols * rng.uniform(0.05, 0.3))
        shade = rng.uniform(0.15, 0.45)
        tone = np.array([0.45, 0.33, 0.22], np.float32) * shade
        mid = sawn_board(rng, (int(rows * 0.75), max(1, share)), tone, canvas.scale)
        top = int(rows * 0.1)
        if rng.random() < 0.5:
            inside[top : top + mid.shape[0], :share] = mid
        else:
            inside[top : top + mid.shape[0], cols - share :] = mid
    inside = cv2.GaussianBlur(inside, (0, 0), max(0.5, 2 * canvas.scale))
    canvas.rgb[window] = inside
    canvas.alpha[window] = 1.0
