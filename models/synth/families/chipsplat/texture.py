"""Block identities: one base texture per block, rendered once at higher resolution than the captures.

The canvas holds the block face plus its surroundings (gap, neighbouring deck board) so captures can be cut
with loose, jittered crops like a real block detector produces. What makes a block unique lives on the face:
the chip (or grain) pattern, stains, cracks, edge damage, paint marks and nail holes. Stamps and nail heads
come from a small shared set of designs and are distractors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from models.synth.families.chipsplat.stamps import STAMP_DESIGNS, STAMP_WEIGHTS, draw_stamp
from models.synth.seeding import derive_rng

SUPERSAMPLE = 1.5  # base texture resolution relative to the capture output
FACE_MARGIN = 0.22  # canvas margin around the face on each side, fraction of the face size
CHIPWOOD_FRACTION = 0.8  # most Euro-pallet blocks are pressed chipwood, the rest solid wood

# Tags that keep the random streams of different purposes independent (see ``derive_rng``).
TAG_BLOCK = 1
TAG_AGE = 2
TAG_CAMERA = 3
TAG_FRAME = 4
TAG_STYLE = 5

FloatArray = np.ndarray
Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True, slots=True)
class BlockTexture:
    """A block's canvas (face plus surroundings) as float reflectance and as an 8-bit image."""

    reflectance: FloatArray  # float32, (height, width, 3), values in [0, 1]
    image: Image.Image  # the same as 8-bit RGB, used as the source of perspective crops
    face_box: Box  # the face in canvas pixels
    material: str

    @classmethod
    def from_reflectance(cls, reflectance: FloatArray, face_box: Box, material: str) -> BlockTexture:
        clipped = np.clip(reflectance, 0.0, 1.0).astype(np.float32)
        image = Image.fromarray((clipped * 255.0 + 0.5).astype(np.uint8), mode="RGB")
        return cls(clipped, image, face_box, material)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> FloatArray:
    """Band-limited noise (unit std): a coarse random grid upsampled bicubically; ``cell`` is its spacing."""
    height, width = shape
    coarse = rng.standard_normal((int(height / cell) + 3, int(width / cell) + 3)).astype(np.float32)
    big = Image.fromarray(coarse, mode="F").resize(
        (int((coarse.shape[1]) * cell), int((coarse.shape[0]) * cell)), Image.Resampling.BICUBIC
    )
    offset = int(cell)
    field = np.asarray(big, dtype=np.float32)[offset : offset + height, offset : offset + width]
    return (field - field.mean()) / (field.std() + 1e-6)


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[float, ...]) -> FloatArray:
    """Sum of ``smooth_noise`` octaves, coarser octaves weighted more."""
    total = np.zeros(shape, np.float32)
    for index, cell in enumerate(cells):
        total += smooth_noise(rng, shape, cell) * 0.6**index
    return total / (total.std() + 1e-6)


CHIP_ORIENTATIONS = 16


@lru_cache(maxsize=256)
def _chip_kernel(length: float, width: float, orientations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse taps (dy, dx, weight) of a sliver-shaped chip, one row per orientation."""
    radius = math.ceil(length * 0.6) + 2
    grid_y, grid_x = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float32)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for index in range(orientations):
        theta = math.pi * index / orientations
        along = grid_x * math.cos(theta) + grid_y * math.sin(theta)
        across = -grid_x * math.sin(theta) + grid_y * math.cos(theta)
        weight = np.exp(-((np.abs(along) / (length / 2)) ** 4) - 0.5 * (across / width) ** 2)
        keep = weight > 0.08
        rows.append((grid_y[keep].astype(np.int32), grid_x[keep].astype(np.int32), weight[keep]))
    taps = max(len(row[2]) for row in rows)
    dy = np.zeros((orientations, taps), np.int32)
    dx = np.zeros((orientations, taps), np.int32)
    weights = np.zeros((orientations, taps), np.float32)
    for index, (row_y, row_x, row_w) in enumerate(rows):
        dy[index, : len(row_w)] = row_y
        dx[index, : len(row_w)] = row_x
        weights[index, : len(row_w)] = row_w
    return dy, dx, weights


def chip_field(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    amplitudes: FloatArray,
    chip_shapes: tuple[tuple[float, float], ...],
    shape_weights: tuple[float, ...] | None = None,
    orientation_range: tuple[float, float] = (0.0, 1.0),
) -> FloatArray:
    """Splat one sliver-shaped chip per amplitude at random places and orientations.

    ``chip_shapes`` are (length, width) pairs drawn with ``shape_weights``; ``orientation_range`` is a
    fraction of the half turn, so solid-wood fibres can all run along the grain. Scatter-add of precomputed
    sparse kernels into a padded buffer keeps this vectorised (no per-chip Python work). Sizes are rounded so
    the kernels can be cached.
    """
    count = len(amplitudes)
    kernels = [
        _chip_kernel(round(length * 2) / 2, round(width * 10) / 10, CHIP_ORIENTATIONS)
        for length, width in chip_shapes
    ]
    pad = max(int(max(np.abs(dy).max(), np.abs(dx).max())) for dy, dx, _ in kernels)
    height, width_px = shape
    padded_w = width_px + 2 * pad
    low, high = orientation_range
    orientation = (rng.uniform(low, high, count) * CHIP_ORIENTATIONS).astype(np.int32) % CHIP_ORIENTATIONS
    weights_p = None if shape_weights is None else np.array(shape_weights) / sum(shape_weights)
    shape_class = rng.choice(len(chip_shapes), size=count, p=weights_p)
    centres = rng.integers(pad, height + pad, count, dtype=np.int32) * padded_w + rng.integers(
        pad, width_px + pad, count, dtype=np.int32
    )
    indices: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for index, (dy, dx, weights) in enumerate(kernels):
        chosen = shape_class == index
        offsets = dy * padded_w + dx
        indices.append((centres[chosen, None] + offsets[orientation[chosen]]).ravel())
        values.append((amplitudes[chosen, None] * weights[orientation[chosen]]).ravel())
    flat = np.bincount(
        np.concatenate(indices), np.concatenate(values), minlength=(height + 2 * pad) * padded_w
    )
    field = flat.reshape(height + 2 * pad, padded_w)[pad : pad + height, pad : pad + width_px]
    return field.astype(np.float32)


def _chipwood_face(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    """Pressed chipwood: flat flakes of slightly different tone, thin pale and dark slivers, mottling."""
    height, width = shape
    base = np.array([0.4, 0.35, 0.27], np.float32) * rng.uniform(0.75, 1.15)
    base *= np.array([1.0, rng.uniform(0.9, 1.03), rng.uniform(0.78, 1.05)], np.float32)
    scale = rng.uniform(0.8, 1.25)
    flakes = int(height * width / (30.0 * scale**2) * rng.uniform(0.8, 1.2))
    flake_field = chip_field(
        rng,
        shape,
        amplitudes=rng.normal(0.0, 0.3, flakes).astype(np.float32),
        chip_shapes=((6.0 * scale, 1.6 * scale), (9.0 * scale, 2.2 * scale)),
    )
    slivers = int(height * width / (28.0 * scale**2) * rng.uniform(0.7, 1.3))
    kind = rng.random(slivers)
    pale_share = rng.uniform(0.15, 0.35)
    sliver_field = chip_field(
        rng,
        shape,
        amplitudes=np.where(
            kind < pale_share, rng.uniform(0.7, 1.6, slivers), rng.uniform(-0.9, -0.3, slivers)
        ).astype(np.float32),
        chip_shapes=((5.0 * scale, 0.7 * scale), (9.0 * scale, 0.75 * scale), (13.0 * scale, 0.8 * scale)),
        shape_weights=(0.5, 0.35, 0.15),
    )
    luminance = np.tanh(flake_field + sliver_field)
    mottle = fractal_noise(rng, shape, (48.0, 16.0))
    face = base[None, None, :] * (1.0 + 0.12 * mottle[..., None]) * (1.0 + 0.45 * luminance[..., None])
    pale = np.clip(luminance, 0.0, None) ** 2
    face += pale[..., None] * np.array([0.22, 0.19, 0.12], np.float32) * rng.uniform(0.6, 1.2)
    return face


def _solid_wood_face(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    """Sawn wood: irregular growth rings bent around knots, fibres along the grain."""
    height, width = shape
    base = np.array([0.6, 0.45, 0.3], np.float32) * rng.uniform(0.7, 1.1)
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    warp = fractal_noise(rng, shape, (120.0, 40.0)) * rng.uniform(4.0, 10.0)
    knot_dark = np.zeros(shape, np.float32)
    for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):
        ky, kx = rng.uniform(0, height), rng.uniform(0, width)
        size = rng.uniform(0.04, 0.1) * height
        dist2 = ((grid_y - ky) ** 2 + ((grid_x - kx) * rng.uniform(0.5, 0.9)) ** 2) / size**2
        warp += rng.uniform(6.0, 14.0) * np.exp(-dist2 * 0.25) * np.sign(grid_y - ky)
        knot_dark += np.exp(-dist2) * rng.uniform(0.5, 0.8)
    period = rng.uniform(6.0, 16.0)
    phase = (grid_y + rng.normal(0.0, 0.05) * grid_x + warp) / period
    phase += 0.25 * fractal_noise(rng, shape, (50.0,))  # uneven ring widths
    latewood = np.exp(-((((phase % 1.0) - 0.5) / rng.uniform(0.07, 0.15)) ** 2))
    luminance = 1.0 - rng.uniform(0.15, 0.3) * latewood + 0.07 * fractal_noise(rng, shape, (60.0,))
    count = int(height * width / 20)
    fibre_field = chip_field(
        rng,
        shape,
        amplitudes=rng.normal(0.0, 0.5, count).astype(np.float32),
        chip_shapes=((8.0, 0.6), (14.0, 0.6)),
        orientation_range=(-0.02, 0.02),
    )
    luminance += 0.12 * np.tanh(fibre_field)
    face = base[None, None, :] * luminance[..., None]
    face *= 1.0 - np.clip(knot_dark, 0.0, 0.85)[..., None] * np.array([0.7, 0.75, 0.8], np.float32)
    return face


def _ellipse_points(
    centre: tuple[float, float], radii: tuple[float, float], angle: float, rng: np.random.Generator
) -> list[Point]:
    """An irregular ellipse outline (random radial wobble) as a polygon."""
    steps = 24
    theta = np.linspace(0, 2 * math.pi, steps, endpoint=False)
    wobble = 1.0 + 0.25 * rng.standard_normal(steps)
    x = radii[0] * np.cos(theta) * wobble
    y = radii[1] * np.sin(theta) * wobble
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return [
        (centre[0] + px * cos_a - py * sin_a, centre[1] + px * sin_a + py * cos_a)
        for px, py in zip(x, y, strict=True)
    ]


def _walk(start: Point, direction: float, steps: int, turn: float, rng: np.random.Generator) -> list[Point]:
    """A wandering polyline of 3-pixel steps; ``turn`` is the std of the direction change per step."""
    x, y = start
    points = [start]
    for change in rng.normal(0.0, turn, steps) if turn > 0 else np.zeros(steps):
        direction += float(change)
        x += 3 * math.cos(direction)
        y += 3 * math.sin(direction)
        points.append((x, y))
    return points


def _mark_alpha(
    canvas: FloatArray,
    points: list[Point],
    pad: float,
    blur: float,
    paint: Callable[[ImageDraw.ImageDraw, list[Point]], None],
) -> tuple[FloatArray, FloatArray]:
    """Draw one mark in its own small mask; returns (alpha, the canvas view it covers).

    Working in the mark's bounding box instead of the whole canvas keeps rendering fast.
    """
    margin = pad + 3 * blur + 2
    height, width = canvas.shape[:2]
    xs = [point[0] for point in points]
    ys = [point[1] for point in points]
    x0, x1 = max(0, int(min(xs) - margin)), min(width, int(max(xs) + margin) + 1)
    y0, y1 = max(0, int(min(ys) - margin)), min(height, int(max(ys) + margin) + 1)
    view = canvas[y0:y1, x0:x1]
    if x1 <= x0 or y1 <= y0:
        return np.zeros((*view.shape[:2], 1), np.float32), view
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    paint(ImageDraw.Draw(mask), [(x - x0, y - y0) for x, y in points])
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(mask, dtype=np.float32)[..., None] / 255.0, view


def _random_point_in(rng: np.random.Generator, box: Box, inset: float) -> Point:
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * inset, (y1 - y0) * inset
    return float(rng.uniform(x0 + dx, x1 - dx)), float(rng.uniform(y0 + dy, y1 - dy))


def _polygon(draw: ImageDraw.ImageDraw, points: list[Point]) -> None:
    draw.polygon(points, fill=255)


def _line(stroke: int) -> Callable[[ImageDraw.ImageDraw, list[Point]], None]:
    def paint(draw: ImageDraw.ImageDraw, local: list[Point]) -> None:
        draw.line(local, fill=255, width=stroke)

    return paint


STAIN_TINTS: tuple[tuple[float, float, float], ...] = (
    (0.45, 0.45, 0.47),  # oil: dark, greyish
    (1.15, 0.78, 0.55),  # rust: orange
    (0.7, 0.68, 0.66),  # water: darker
)


def add_stains(canvas: FloatArray, rng: np.random.Generator, box: Box, count: int) -> None:
    """Oil, water and rust stains: soft irregular blobs that darken or tint the wood."""
    face_h = box[3] - box[1]
    for _ in range(count):
        size = rng.uniform(0.08, 0.35) * face_h
        radii = (size * rng.uniform(0.8, 2.0), size * rng.uniform(0.5, 1.0))
        outline = _ellipse_points(_random_point_in(rng, box, 0.0), radii, rng.uniform(0, math.pi), rng)
        alpha, view = _mark_alpha(canvas, outline, 0.0, size * 0.3, _polygon)
        alpha *= rng.uniform(0.3, 0.8)
        tint = np.array(STAIN_TINTS[int(rng.integers(len(STAIN_TINTS)))], np.float32)
        view *= 1.0 - alpha + alpha * tint


def add_cracks(canvas: FloatArray, rng: np.random.Generator, box: Box, count: int) -> None:
    """Dark thin cracks as wandering polylines, usually starting at the face edge."""
    face_h = box[3] - box[1]
    for _ in range(count):
        x, y = _random_point_in(rng, box, 0.02)
        if rng.random() < 0.6:  # start on an edge
            side = int(rng.integers(4))
            x = box[0] if side == 0 else box[2] if side == 1 else x
            y = box[1] if side == 2 else box[3] if side == 3 else y
        direction = math.atan2((box[1] + box[3]) / 2 - y, (box[0] + box[2]) / 2 - x) + rng.normal(0, 0.6)
        points = _walk((x, y), direction, int(rng.uniform(0.1, 0.5) * face_h / 3), 0.3, rng)
        stroke = int(rng.integers(1, 3))
        alpha, view = _mark_alpha(canvas, points, stroke, 0.5, _line(stroke))
        view *= 1.0 - alpha * rng.uniform(0.55, 0.85)


def add_scratches(canvas: FloatArray, rng: np.random.Generator, box: Box, count: int) -> None:
    """Pale fresh-wood scratches (forklift tines, nails): short, slightly curved light lines."""
    face_h = box[3] - box[1]
    for _ in range(count):
        start = _random_point_in(rng, box, 0.05)
        steps = int(rng.uniform(0.1, 0.45) * face_h / 3)
        points = _walk(start, rng.uniform(0, 2 * math.pi), steps, abs(rng.normal(0, 0.03)), rng)
        stroke = int(rng.integers(1, 3))
        alpha, view = _mark_alpha(canvas, points, stroke, 0.4, _line(stroke))
        view *= 1.0 + alpha * rng.uniform(0.4, 0.8) * np.array([0.8, 0.7, 0.45], np.float32)


def add_edge_damage(canvas: FloatArray, rng: np.random.Generator, box: Box, count: int) -> None:
    """Chunks broken off the face edge: either pale exposed wood or a dark missing piece."""
    x0, y0, x1, y1 = box
    face_h = y1 - y0
    for _ in range(count):
        side = int(rng.integers(4))
        along = rng.uniform(0.05, 0.95)
        centre = (
            (x0 if side == 0 else x1 if side == 1 else x0 + along * (x1 - x0)),
            (y0 if side == 2 else y1 if side == 3 else y0 + along * (y1 - y0)),
        )
        radius = rng.uniform(0.04, 0.16) * face_h
        outline = _ellipse_points(
            centre, (radius * rng.uniform(1.0, 2.2), radius), rng.uniform(0, math.pi), rng
        )
        alpha, view = _mark_alpha(canvas, outline, 0.0, 1.0, _polygon)
        if rng.random() < 0.55:
            effect = np.array([1.45, 1.4, 1.3], np.float32) * rng.uniform(0.9, 1.2)
        else:
            effect = np.full(3, rng.uniform(0.25, 0.5), np.float32)
        view *= 1.0 - alpha + alpha * effect


PAINT_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.12, 0.25, 0.65),  # blue
    (0.7, 0.12, 0.1),  # red
    (0.85, 0.7, 0.1),  # yellow
    (0.15, 0.5, 0.2),  # green
    (0.85, 0.85, 0.82),  # white
    (0.9, 0.42, 0.08),  # orange
)


def add_paint(canvas: FloatArray, rng: np.random.Generator, box: Box) -> None:
    """An owner's paint or marker mark: a spray dot or a brush stroke, texture showing through."""
    face_h = box[3] - box[1]
    if rng.random() < 0.5:
        radius = rng.uniform(0.06, 0.2) * face_h
        outline = _ellipse_points(
            _random_point_in(rng, box, 0.1), (radius, radius * rng.uniform(0.7, 1.0)), 0.0, rng
        )
        alpha, view = _mark_alpha(canvas, outline, 0.0, radius * 0.35, _polygon)
    else:
        ends = [_random_point_in(rng, box, 0.1), _random_point_in(rng, box, 0.1)]
        stroke = int(rng.uniform(0.03, 0.1) * face_h) + 1
        alpha, view = _mark_alpha(canvas, ends, stroke, 1.5, _line(stroke))
    alpha *= rng.uniform(0.4, 0.85)
    colour = np.array(PAINT_COLOURS[int(rng.integers(len(PAINT_COLOURS)))], np.float32)
    relief = view.mean(axis=2, keepdims=True) / (canvas.mean() + 1e-6)
    view[:] = view * (1.0 - alpha) + alpha * colour * (0.7 + 0.3 * relief)


def _disc(radius: float) -> Callable[[ImageDraw.ImageDraw, list[Point]], None]:
    def paint(draw: ImageDraw.ImageDraw, local: list[Point]) -> None:
        cx, cy = local[0]
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)

    return paint


def add_nail_holes(canvas: FloatArray, rng: np.random.Generator, box: Box, count: int) -> None:
    """Dark round holes left by pulled nails."""
    face_h = box[3] - box[1]
    for _ in range(count):
        radius = rng.uniform(0.03, 0.055) * face_h
        alpha, view = _mark_alpha(canvas, [_random_point_in(rng, box, 0.08)], radius, 0.8, _disc(radius))
        view *= 1.0 - alpha * rng.uniform(0.75, 0.92)


def _add_nail_heads(canvas: FloatArray, rng: np.random.Generator, box: Box) -> None:
    """Shared nail-head design (dull grey disc, faint highlight), placed at random: a distractor."""
    face_h = box[3] - box[1]
    for _ in range(int(rng.integers(1, 3))):
        centre = _random_point_in(rng, box, 0.1)
        radius = rng.uniform(0.035, 0.05) * face_h
        alpha, view = _mark_alpha(canvas, [centre], radius, 0.6, _disc(radius))
        metal = np.array([0.36, 0.35, 0.35], np.float32) * rng.uniform(0.7, 1.1)
        view[:] = view * (1.0 - alpha) + alpha * metal
        shine = (centre[0] - radius * 0.25, centre[1] - radius * 0.25)
        highlight, view = _mark_alpha(canvas, [shine], radius * 0.4, radius * 0.25, _disc(radius * 0.4))
        view += highlight * 0.06


def _add_stamp(canvas: FloatArray, rng: np.random.Generator, box: Box) -> None:
    """One of the shared stamp designs printed near the face centre, with blotchy ink."""
    x0, y0, x1, y1 = box
    face_w, face_h = x1 - x0, y1 - y0
    design = STAMP_DESIGNS[int(rng.choice(len(STAMP_DESIGNS), p=STAMP_WEIGHTS))]
    width = min(face_w * rng.uniform(*design.width_fraction), face_h * 0.92 * design.aspect)
    centre = (
        (x0 + x1) / 2 + rng.normal(0, 0.04) * face_w,
        (y0 + y1) / 2 + rng.normal(0, 0.05) * face_h,
    )
    angle = float(rng.normal(0, 1.5))
    stroke = max(2, round(face_h * rng.uniform(0.022, 0.036)))

    def paint(draw: ImageDraw.ImageDraw, local: list[Point]) -> None:
        draw_stamp(draw, design, centre=local[0], width=width, angle_deg=angle, stroke=stroke)

    alpha, view = _mark_alpha(canvas, [centre], width * 0.56 + stroke, 0.7, paint)
    blotch = np.clip(0.8 + 0.25 * smooth_noise(rng, view.shape[:2], 12.0), 0.3, 1.0)[..., None]
    view *= 1.0 - alpha * blotch * rng.uniform(0.65, 0.95)


def _deck_board(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    """A cheap out-of-focus neighbouring board: streaky grain along its length."""
    height = shape[0]
    rows = np.arange(height, dtype=np.float32)[:, None]
    bend = smooth_noise(rng, shape, 60.0) * rng.uniform(2.0, 6.0)
    grain = np.sin(2 * math.pi * (rows + bend) / rng.uniform(5.0, 12.0))
    base = np.array([0.6, 0.45, 0.3], np.float32) * rng.uniform(0.7, 1.1)
    return base * (1.0 - 0.12 * grain - 0.08 * bend / 6.0)[..., None]


def _surroundings(rng: np.random.Generator, shape: tuple[int, int], box: Box) -> FloatArray:
    """What the crop shows around the face: a dark gap, sometimes a shaded neighbouring deck board."""
    height, width = shape
    canvas = np.full((height, width, 3), rng.uniform(0.03, 0.08), np.float32)
    canvas *= 1.0 + 0.3 * smooth_noise(rng, shape, 20.0)[..., None]
    if rng.random() < 0.6:
        if rng.random() < 0.5:
            rows = slice(0, int(box[1] - rng.uniform(0.1, 0.6) * box[1]))
        else:
            rows = slice(int(box[3] + rng.uniform(0.1, 0.6) * (height - box[3])), height)
        board_height = len(range(height)[rows])
        if board_height > 0:
            canvas[rows] = _deck_board(rng, (board_height, width)) * rng.uniform(0.25, 0.5)
    return canvas


def _compose(
    rng: np.random.Generator, canvas: FloatArray, face: FloatArray, origin: tuple[int, int], box: Box
) -> None:
    """Put the face (whose top-left canvas pixel is ``origin``) on the canvas: rough edge, darkened bevel."""
    height, width = face.shape[:2]
    oy, ox = origin
    x0, y0, x1, y1 = box[0] - ox, box[1] - oy, box[2] - ox, box[3] - oy
    cols = np.arange(width, dtype=np.float32)[None, :]
    rows = np.arange(height, dtype=np.float32)[:, None]
    inside = np.minimum(np.minimum(cols - x0, x1 - cols), np.minimum(rows - y0, y1 - rows))
    rough = 1.0 * smooth_noise(rng, (height, width), 8.0)
    alpha = np.clip(inside + rough, 0.0, 1.0)[..., None]
    bevel = 1.0 - rng.uniform(0.2, 0.5) * np.exp(-np.clip(inside, 0.0, None) / ((y1 - y0) * 0.03))[..., None]
    view = canvas[oy : oy + height, ox : ox + width]
    view[:] = face * bevel * alpha + view * (1.0 - alpha)


def canvas_layout(output_size: tuple[int, int]) -> tuple[tuple[int, int], Box]:
    """Canvas (height, width) and face box for captures of ``output_size`` = (width, height)."""
    face_w, face_h = output_size[0] * SUPERSAMPLE, output_size[1] * SUPERSAMPLE
    margin_x, margin_y = face_w * FACE_MARGIN, face_h * FACE_MARGIN
    shape = (round(face_h + 2 * margin_y), round(face_w + 2 * margin_x))
    return shape, (margin_x, margin_y, margin_x + face_w, margin_y + face_h)


def render_block(
    seed: int, pallet_index: int, position: int, output_size: tuple[int, int] = (280, 175)
) -> BlockTexture:
    """The new (un-aged) block ``position`` of pallet ``pallet_index``; depends only on these and the seed."""
    rng = derive_rng(seed, TAG_BLOCK, pallet_index, position)
    shape, box = canvas_layout(output_size)
    # the face is rendered in its own array (plus a few pixels for the rough edge), not over the whole canvas
    edge = 4
    origin = (max(0, int(box[1]) - edge), max(0, int(box[0]) - edge))
    face_shape = (
        min(shape[0], math.ceil(box[3]) + edge) - origin[0],
        min(shape[1], math.ceil(box[2]) + edge) - origin[1],
    )
    local_box = (box[0] - origin[1], box[1] - origin[0], box[2] - origin[1], box[3] - origin[0])
    chipwood = rng.random() < CHIPWOOD_FRACTION
    face = _chipwood_face(rng, face_shape) if chipwood else _solid_wood_face(rng, face_shape)
    add_stains(face, rng, local_box, int(rng.poisson(1.0)))
    add_cracks(face, rng, local_box, int(rng.poisson(0.3 if chipwood else 1.2)))
    add_edge_damage(face, rng, local_box, int(rng.poisson(1.0)))
    add_nail_holes(face, rng, local_box, int(rng.choice([0, 1, 1, 1, 2, 3])))
    if rng.random() < 0.25:
        add_paint(face, rng, local_box)
    if rng.random() < 0.3:
        _add_nail_heads(face, rng, local_box)
    if rng.random() < (0.9 if chipwood else 0.7):
        _add_stamp(face, rng, local_box)
    canvas = _surroundings(rng, shape, box)
    _compose(rng, canvas, face, origin, box)
    return BlockTexture.from_reflectance(canvas, box, "chipwood" if chipwood else "solid")


def age_block(texture: BlockTexture, seed: int, pallet_index: int, position: int) -> BlockTexture:
    """The same block after months in circulation: faded, grimy, darker, with new stains, scratches, damage.

    Uses its own random stream, so ageing never changes the new block and is the same every time.
    """
    rng = derive_rng(seed, TAG_AGE, pallet_index, position)
    canvas = texture.reflectance.copy()
    box = texture.face_box
    shape = canvas.shape[:2]
    local_mean = np.asarray(texture.image.filter(ImageFilter.BoxBlur(10)), dtype=np.float32) / 255.0
    canvas = local_mean + (canvas - local_mean) * rng.uniform(0.72, 0.92)
    grime = np.clip(0.5 + 0.5 * fractal_noise(rng, shape, (60.0, 20.0)), 0.0, 1.0)[..., None]
    canvas *= 1.0 - rng.uniform(0.08, 0.3) * grime * np.array([1.0, 0.97, 0.9], np.float32)
    canvas *= rng.uniform(0.8, 0.95)
    add_stains(canvas, rng, box, int(rng.poisson(1.5)))
    add_scratches(canvas, rng, box, int(rng.integers(2, 7)))
    add_edge_damage(canvas, rng, box, int(rng.poisson(0.6)))
    return BlockTexture.from_reflectance(canvas, box, texture.material)
