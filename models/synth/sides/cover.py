"""What stands on and hangs over a pallet side: the load, stretch film, straps and fork tines."""

from __future__ import annotations

import itertools
import math

import numpy as np

from models.synth.sides import geometry as geo
from models.synth.sides.pallet import PlaneCanvas
from models.synth.sides.textures import colour, sawn_board, smooth_noise

FloatArray = np.ndarray

CARDBOARD = (0.62, 0.47, 0.3)


def _carton(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> FloatArray:
    rows, cols = shape
    tone: FloatArray = np.array(CARDBOARD, np.float32) * rng.uniform(0.75, 1.15) * rng.uniform(0.92, 1.08, 3)
    if rng.random() < 0.2:
        tone = np.array([0.85, 0.84, 0.8], np.float32) * rng.uniform(0.8, 1.05)
    box = (
        colour(tuple(tone), shape)
        * (1 + 0.04 * smooth_noise(rng, shape, 10 * scale + 1, 30 * scale + 1))[..., None]
    )
    tape = max(1, int(rng.uniform(40, 60) * scale))
    if rng.random() < 0.7 and cols > 2 * tape:
        middle = cols // 2
        box[:, middle - tape // 2 : middle + tape // 2] *= rng.uniform(0.8, 1.2)
    if rng.random() < 0.5 and rows > 30 and cols > 30:  # a label
        h, w = int(rows * rng.uniform(0.15, 0.35)), int(cols * rng.uniform(0.15, 0.4))
        r, c = int(rng.uniform(0.05, 0.6) * rows), int(rng.uniform(0.05, 0.6) * cols)
        box[r : r + h, c : c + w] = rng.uniform(0.8, 0.95)
        for line in range(r + 3, r + h - 2, max(2, int(6 * scale))):
            box[line : line + max(1, int(scale * 1.5)), c + 3 : c + int(w * rng.uniform(0.4, 0.9))] = 0.15
    edges = np.ones(shape, np.float32)
    edges[: max(1, int(2 * scale))] = 0.7
    edges[:, : max(1, int(2 * scale))] = 0.8
    return np.asarray(box * edges[..., None], np.float32)


def draw_load(canvas: PlaneCanvas, rng: np.random.Generator, height: float) -> None:
    """The load above the pallet (``height`` mm): cartons, sacks, drums, bricks or a pallet stack."""
    if height <= 0:
        return
    kind = rng.choice(["cartons", "cartons", "sacks", "drums", "bricks", "pallets"])
    overhang = rng.uniform(-60.0, 40.0)
    x0, x1 = -overhang, geo.LENGTH + overhang
    scale = canvas.scale
    if kind == "cartons":
        layers = max(1, int(height // rng.uniform(200, 450)))
        layer_height = height / layers
        for layer in range(layers):
            count = int(rng.integers(1, 5))
            edges = np.linspace(x0, x1, count + 1) + np.r_[0, rng.uniform(-20, 20, count - 1), 0]
            for left, right in itertools.pairwise(edges):
                top, bottom = -(layer + 1) * layer_height, -layer * layer_height
                window = canvas.window(left, top, right, bottom)
                shape = canvas.shape_of(window)
                if min(shape) > 0:
                    canvas.paint((left, top, right, bottom), _carton(rng, shape, scale))
    elif kind == "sacks":
        window = canvas.window(x0, -height, x1, 0.0)
        rows, cols = canvas.shape_of(window)
        tone = np.array([0.86, 0.83, 0.74], np.float32) * rng.uniform(0.6, 1.05)
        pixels = colour(tuple(tone), (rows, cols))
        stripes = max(1, int(height // rng.uniform(110, 180)))
        y = np.linspace(0, stripes * math.pi, rows, dtype=np.float32)[:, None]
        shade = 0.75 + 0.25 * np.abs(np.sin(y)) + 0.05 * smooth_noise(rng, (rows, cols), 15, 15)
        canvas.paint((x0, -height, x1, 0.0), pixels * shade[..., None])
    elif kind == "drums":
        count = int(rng.integers(2, 5))
        tone = np.array(
            [[0.15, 0.3, 0.6], [0.1, 0.1, 0.1], [0.7, 0.2, 0.1], [0.85, 0.85, 0.8]][rng.integers(4)],
            np.float32,
        )
        width = geo.LENGTH / count
        for index in range(count):
            left = index * width + rng.uniform(0, 15)
            window = canvas.window(left, -height, left + width - 10, 0.0)
            rows, cols = canvas.shape_of(window)
            if min(rows, cols) == 0:
                continue
            x = np.linspace(-1, 1, cols, dtype=np.float32)[None, :]
            shade = 0.45 + 0.6 * np.sqrt(np.clip(1 - x * x, 0, 1)) * np.ones((rows, 1), np.float32)
            for ring in (0.1, 0.5, 0.9):
                r = int(ring * rows)
                shade[max(0, r - 2) : r + 2] *= 0.7
            canvas.paint(
                (left, -height, left + width - 10, 0.0), colour(tuple(tone), (rows, cols)) * shade[..., None]
            )
    elif kind == "bricks":
        window = canvas.window(x0, -height, x1, 0.0)
        rows, cols = canvas.shape_of(window)
        tone = (
            np.array([0.62, 0.3, 0.2], np.float32)
            if rng.random() < 0.6
            else np.array([0.7, 0.7, 0.68], np.float32)
        )
        pixels = colour(tuple(tone * rng.uniform(0.7, 1.1)), (rows, cols))
        course = max(2, int(rng.uniform(60, 90) * scale))
        brick = max(2, int(rng.uniform(200, 260) * scale))
        for r in range(0, rows, course):
            pixels[r : r + max(1, int(8 * scale))] = 0.75
            shift = (r // course) % 2 * brick // 2
            for c in range(shift, cols, brick):
                pixels[r : r + course, c : c + max(1, int(8 * scale))] = 0.75
        canvas.paint(
            (x0, -height, x1, 0.0), pixels * (1 + 0.08 * smooth_noise(rng, (rows, cols), 5, 5))[..., None]
        )
    else:  # empty pallets stacked on this one: boards only, blocks hidden in shadow (a hard negative)
        level = 0.0
        while level < height - 60:
            top = -level - geo.HEIGHT
            window = canvas.window(0.0, top, geo.LENGTH, top + geo.BOARD)
            shape = canvas.shape_of(window)
            tone = np.array([0.7, 0.58, 0.42], np.float32) * rng.uniform(0.6, 1.0)
            if min(shape) > 0:
                canvas.paint((0.0, top, geo.LENGTH, top + geo.BOARD), sawn_board(rng, shape, tone, scale))
                canvas.paint(
                    (0.0, top + geo.BLOCK_BOTTOM, geo.LENGTH, -level),
                    sawn_board(
                        rng,
                        canvas.shape_of(canvas.window(0.0, top + geo.BLOCK_BOTTOM, geo.LENGTH, -level)),
                        tone,
                        scale,
                    ),
                )
                dark = canvas.window(0.0, top + geo.BOARD, geo.LENGTH, top + geo.BLOCK_BOTTOM)
                canvas.rgb[dark] = rng.uniform(0.03, 0.12)
                canvas.alpha[dark] = 1.0
            level += geo.HEIGHT


def draw_film(canvas: PlaneCanvas, rng: np.random.Generator, top: float, bottom: float) -> None:
    """Stretch film from ``top`` down to ``bottom`` (plane mm): a translucent sheen with glossy streaks."""
    window = canvas.window(-30.0, top, geo.LENGTH + 30.0, bottom)
    rows, cols = canvas.shape_of(window)
    if rows == 0 or cols == 0:
        return
    haze = rng.uniform(0.08, 0.3)
    streaks = smooth_noise(rng, (rows, cols), max(1.0, rows / 3), max(1.0, 8 * canvas.scale))
    sheen = np.clip(
        haze + 0.25 * np.clip(streaks - 0.8, 0, None) + 0.05 * smooth_noise(rng, (rows, cols), 20, 20), 0, 0.8
    )
    tint = np.array([0.9, 0.93, 0.95], np.float32) * rng.uniform(0.8, 1.1)
    covered = canvas.alpha[window] > 0
    rgb = canvas.rgb[window]
    canvas.rgb[window] = np.where(
        covered[..., None], rgb * (1 - sheen[..., None]) + tint * sheen[..., None], rgb
    )


def draw_straps(canvas: PlaneCanvas, rng: np.random.Generator, top: float) -> None:
    """One or two vertical straps from the load's top down over the whole side."""
    tones = [(0.92, 0.92, 0.9), (0.1, 0.25, 0.65), (0.08, 0.08, 0.08), (0.15, 0.5, 0.2), (0.85, 0.75, 0.15)]
    for _ in range(int(rng.integers(1, 3))):
        width = rng.uniform(12.0, 20.0)
        left = rng.uniform(-width, geo.LENGTH)
        window = canvas.window(left, top, left + width, geo.HEIGHT + 2)
        rows, cols = canvas.shape_of(window)
        if rows == 0 or cols == 0:
            continue
        tone = np.array(tones[int(rng.integers(len(tones)))], np.float32) * rng.uniform(0.7, 1.1)
        ribs = 1 + 0.08 * np.sin(np.arange(rows, dtype=np.float32)[:, None] * rng.uniform(0.5, 1.5))
        pixels = colour(tuple(tone), (rows, cols)) * ribs[..., None]
        canvas.paint((left, top, left + width, geo.HEIGHT + 2), pixels)
        canvas.cover[window] = 1.0


def draw_forks(canvas: PlaneCanvas, rng: np.random.Generator) -> None:
    """Fork tines in both openings (cross-sections), each shifted so that it may cover a block's edge."""
    tone = np.array([0.18, 0.18, 0.2], np.float32) * rng.uniform(0.5, 1.6)
    if rng.random() < 0.3:
        tone = np.array([0.7, 0.55, 0.1], np.float32) * rng.uniform(0.8, 1.1)  # painted tines
    width, thickness = rng.uniform(100.0, 150.0), rng.uniform(40.0, 60.0)
    lift = rng.uniform(0.0, 15.0)
    for left, right in (
        (geo.BLOCK_WIDTH, geo.BLOCK_LEFTS[1]),
        (geo.BLOCK_LEFTS[1] + geo.BLOCK_WIDTH, geo.BLOCK_LEFTS[2]),
    ):
        # usually inside the opening; sometimes reaching over the neighbouring block by up to a third of it
        x0 = rng.uniform(left - geo.BLOCK_WIDTH * 0.3, right - width + geo.BLOCK_WIDTH * 0.3)
        y1 = geo.BLOCK_BOTTOM - lift
        rect = (x0, y1 - thickness, x0 + width, y1)
        window = canvas.window(*rect)
        rows, cols = canvas.shape_of(window)
        if rows == 0 or cols == 0:
            continue
        y = np.linspace(0, 1, rows, dtype=np.float32)[:, None]
        shade = 0.8 + 0.4 * (1 - y) ** 2 + 0.05 * smooth_noise(rng, (rows, cols), 4, 10)
        canvas.paint(rect, colour(tuple(tone), (rows, cols)) * shade[..., None])
        canvas.cover[window] = 1.0
