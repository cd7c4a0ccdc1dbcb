"""What is drawn onto a flakepress face: identity marks, and the distractors every pallet shares.

Identity marks (differ between blocks): bark inclusions, oil soaked into the board, wax-crayon tallies that
only catch the high flakes, old nail holes, weathered edge chips. Distractors (one design on every pallet,
only their placement and print quality vary): the EPAL oval branded or inked on the corner blocks, the IPPC
box and the metal control staple on the middle blocks, domed nail heads. Glyphs are filled bold polygons of
this module's own, no fonts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from models.synth.families.flakepress.noise import power_law_noise

FloatArray = np.ndarray
Box = tuple[float, float, float, float]
Point = tuple[float, float]
Painter = Callable[[ImageDraw.ImageDraw, Callable[[float, float], Point]], None]

CORNER_POSITIONS = frozenset({0, 2, 3, 5})  # of the six blocks along a pallet's two long sides
SUPERSAMPLE = 3  # masks are drawn this much finer and reduced: smooth edges


@dataclass(frozen=True, slots=True)
class Patch:
    """A mask drawn over part of the canvas: ``alpha`` covers ``canvas[rows, cols]``."""

    alpha: FloatArray
    rows: slice
    cols: slice


def draw_patch(shape: tuple[int, int], bounds: Box, paint: Painter, blur: float = 0.0) -> Patch:
    """Draw a mask in the canvas region ``bounds`` (clipped); ``paint`` gets canvas-to-mask coordinates."""
    rows, cols = shape
    pad = 2 + 3 * blur
    x0, y0 = max(0, int(bounds[0] - pad)), max(0, int(bounds[1] - pad))
    x1, y1 = min(cols, int(bounds[2] + pad) + 1), min(rows, int(bounds[3] + pad) + 1)
    if x1 <= x0 or y1 <= y0:
        return Patch(np.zeros((0, 0), np.float32), slice(0, 0), slice(0, 0))
    mask = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)

    def to_mask(x: float, y: float) -> Point:
        return ((x - x0) * SUPERSAMPLE, (y - y0) * SUPERSAMPLE)

    paint(ImageDraw.Draw(mask), to_mask)
    mask = mask.reduce(SUPERSAMPLE)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return Patch(np.asarray(mask, dtype=np.float32) / 255.0, slice(y0, y1), slice(x0, x1))


def blob_outline(
    centre: Point, radii: Point, angle: float, rng: np.random.Generator, corners: int = 18
) -> list[Point]:
    theta = np.linspace(0.0, 2 * math.pi, corners, endpoint=False)
    wobble = 1.0 + 0.22 * power_law_noise(rng, (1, corners), 1.0)[0]
    xs, ys = radii[0] * np.cos(theta) * wobble, radii[1] * np.sin(theta) * wobble
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return [
        (centre[0] + x * cos_a - y * sin_a, centre[1] + x * sin_a + y * cos_a)
        for x, y in zip(xs, ys, strict=True)
    ]


def outline_bounds(points: Sequence[Point]) -> Box:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def polygon_painter(points: Sequence[Point]) -> Painter:
    def paint(draw: ImageDraw.ImageDraw, to_mask: Callable[[float, float], Point]) -> None:
        draw.polygon([to_mask(*p) for p in points], fill=255)

    return paint


def _inside(rng: np.random.Generator, box: Box, inset: float) -> Point:
    dx, dy = (box[2] - box[0]) * inset, (box[3] - box[1]) * inset
    return float(rng.uniform(box[0] + dx, box[2] - dx)), float(rng.uniform(box[1] + dy, box[3] - dy))


# --- identity marks ---------------------------------------------------------------------------------------


def bark_inclusion(albedo: FloatArray, height: FloatArray, rng: np.random.Generator, box: Box) -> None:
    """A long dark strip of bark pressed into the board, with paler fibres along it."""
    face_h = box[3] - box[1]
    centre = _inside(rng, box, 0.05)
    length, width = rng.uniform(0.1, 0.3) * face_h * 1.6, rng.uniform(0.02, 0.05) * face_h
    outline = blob_outline(centre, (length / 2, width / 2), rng.uniform(0, math.pi), rng)
    patch = draw_patch(albedo.shape[:2], outline_bounds(outline), polygon_painter(outline), blur=0.4)
    alpha = patch.alpha[..., None]
    bark = np.array([0.2, 0.14, 0.1], np.float32) * rng.uniform(0.6, 1.2)
    fibres = 1.0 + 0.35 * power_law_noise(rng, patch.alpha.shape, 1.0, stretch=6.0)[..., None]
    view = albedo[patch.rows, patch.cols]
    view[:] = view * (1 - alpha) + alpha * bark * fibres
    height[patch.rows, patch.cols] += 0.3 * patch.alpha


def oil_soak(albedo: FloatArray, rng: np.random.Generator, box: Box) -> None:
    """Oil soaked into the board: darker, more saturated, soft-edged; the chips still show through."""
    face_h = box[3] - box[1]
    radius = rng.uniform(0.06, 0.22) * face_h
    outline = blob_outline(
        _inside(rng, box, 0.0), (radius * rng.uniform(1.0, 1.8), radius), rng.uniform(0, math.pi), rng
    )
    patch = draw_patch(
        albedo.shape[:2], outline_bounds(outline), polygon_painter(outline), blur=radius * 0.25
    )
    alpha = patch.alpha[..., None] * rng.uniform(0.4, 0.85)
    view = albedo[patch.rows, patch.cols]
    grey = view.mean(axis=2, keepdims=True)
    soaked = (grey + (view - grey) * 1.4) * np.array([0.55, 0.5, 0.45], np.float32)
    view[:] = view * (1 - alpha) + alpha * np.clip(soaked, 0.0, 1.0)


CRAYON_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.75, 0.12, 0.1),
    (0.12, 0.22, 0.7),
    (0.9, 0.8, 0.15),
    (0.06, 0.06, 0.06),
    (0.9, 0.9, 0.86),
    (0.15, 0.55, 0.25),
)


def crayon_tally(albedo: FloatArray, height: FloatArray, rng: np.random.Generator, box: Box) -> None:
    """Wax-crayon strokes (a tally or a cross); the wax only rubs off onto the higher flakes."""
    face_h = box[3] - box[1]
    start = _inside(rng, box, 0.15)
    angle = rng.uniform(0, math.pi)
    strokes = int(rng.integers(2, 6))
    length = rng.uniform(0.15, 0.4) * face_h
    spacing = rng.uniform(0.03, 0.07) * face_h
    crossed = rng.random() < 0.4
    lines: list[tuple[Point, Point]] = []
    for index in range(strokes):
        ox, oy = (
            start[0] + index * spacing * math.cos(angle + math.pi / 2),
            start[1] + index * spacing * math.sin(angle + math.pi / 2),
        )
        tilt = angle + rng.normal(0, 0.06)
        lines.append(((ox, oy), (ox + length * math.cos(tilt), oy + length * math.sin(tilt))))
    if crossed:
        (a, _), (_, b) = lines[0], lines[-1]
        lines.append((a, b))
    stroke = rng.uniform(0.012, 0.025) * face_h
    points = [p for line in lines for p in line]

    def paint(draw: ImageDraw.ImageDraw, to_mask: Callable[[float, float], Point]) -> None:
        for p, q in lines:
            draw.line([to_mask(*p), to_mask(*q)], fill=255, width=max(1, round(stroke * SUPERSAMPLE)))

    patch = draw_patch(albedo.shape[:2], outline_bounds(points), paint, blur=0.3)
    relief = height[patch.rows, patch.cols]
    raised = np.clip((relief - np.median(relief)) * 2.0 + 0.5, 0.0, 1.0)
    alpha = (patch.alpha * raised * rng.uniform(0.6, 0.95))[..., None]
    colour = np.array(CRAYON_COLOURS[int(rng.integers(len(CRAYON_COLOURS)))], np.float32)
    view = albedo[patch.rows, patch.cols]
    view[:] = view * (1 - alpha) + alpha * colour


def nail_hole(
    albedo: FloatArray, height: FloatArray, rng: np.random.Generator, box: Box, *, splinters: bool
) -> None:
    """A hole left by a pulled nail: dark and deep; fresh ones have a ring of pale torn fibres."""
    face_h = box[3] - box[1]
    centre = _inside(rng, box, 0.06)
    radius = rng.uniform(0.012, 0.022) * face_h
    ring = radius * rng.uniform(1.6, 2.4)

    def paint(draw: ImageDraw.ImageDraw, to_mask: Callable[[float, float], Point]) -> None:
        x0, y0 = to_mask(centre[0] - radius, centre[1] - radius)
        x1, y1 = to_mask(centre[0] + radius, centre[1] + radius)
        draw.ellipse((x0, y0, x1, y1), fill=255)

    bounds = (centre[0] - ring, centre[1] - ring, centre[0] + ring, centre[1] + ring)
    hole = draw_patch(albedo.shape[:2], bounds, paint, blur=0.5)
    view = albedo[hole.rows, hole.cols]
    if splinters:
        rows, cols = hole.alpha.shape
        ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float32)
        dy, dx = ys + hole.rows.start - centre[1], xs + hole.cols.start - centre[0]
        distance = np.hypot(dx, dy)
        spokes = np.clip(np.cos(np.arctan2(dy, dx) * int(rng.integers(5, 9)) + rng.uniform(0, 6)), 0.0, 1.0)
        torn = (np.clip(1 - np.abs(distance - radius * 1.3) / (ring - radius), 0.0, 1.0) * spokes)[..., None]
        view[:] = view * (1 + 0.5 * torn * np.array([1.0, 0.9, 0.7], np.float32))
    alpha = hole.alpha[..., None]
    view[:] = view * (1 - alpha * rng.uniform(0.8, 0.92))
    height[hole.rows, hole.cols] -= 2.5 * hole.alpha


def edge_chip(
    albedo: FloatArray, height: FloatArray, rng: np.random.Generator, box: Box, *, fresh: bool
) -> None:
    """A piece broken out of the face edge; the exposed core is rough (fresh: pale, old: weathered dark)."""
    x0, y0, x1, y1 = box
    face_h = y1 - y0
    if rng.random() < 0.35:  # corners break most
        centre = (x0 if rng.random() < 0.5 else x1, y0 if rng.random() < 0.5 else y1)
    else:
        side = int(rng.integers(4))
        along = float(rng.uniform(0.05, 0.95))
        centre = (
            x0 if side == 0 else x1 if side == 1 else x0 + along * (x1 - x0),
            y0 if side == 2 else y1 if side == 3 else y0 + along * (y1 - y0),
        )
    radius = rng.uniform(0.03, 0.12) * face_h
    outline = blob_outline(
        centre, (radius * rng.uniform(1.0, 2.0), radius), rng.uniform(0, math.pi), rng, corners=12
    )
    patch = draw_patch(albedo.shape[:2], outline_bounds(outline), polygon_painter(outline), blur=0.5)
    alpha = patch.alpha[..., None]
    rough = 1.0 + 0.25 * rng.standard_normal(patch.alpha.shape).astype(np.float32)[..., None]
    core = np.array([0.7, 0.58, 0.42] if fresh else [0.3, 0.25, 0.2], np.float32) * rng.uniform(0.8, 1.15)
    view = albedo[patch.rows, patch.cols]
    view[:] = view * (1 - alpha) + alpha * core * rough
    height[patch.rows, patch.cols] -= rng.uniform(1.5, 3.5) * patch.alpha


# --- distractors: one design on every pallet --------------------------------------------------------------

Rect = tuple[float, float, float, float]
Shape = tuple[tuple[Point, ...], bool]  # polygon in a unit glyph cell, True: solid, False: hole


def _rect(x0: float, y0: float, x1: float, y1: float) -> Shape:
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1)), True


def _arc_band(
    cx: float, cy: float, rx: float, ry: float, thickness: float, start: float, end: float
) -> Shape:
    """A thick elliptic arc as one polygon (outer edge forward, inner edge back)."""
    steps = 16
    angles = [math.radians(start + (end - start) * i / steps) for i in range(steps + 1)]
    outer = [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]
    inner = [
        (cx + (rx - thickness) * math.cos(a), cy + (ry - thickness) * math.sin(a)) for a in reversed(angles)
    ]
    return tuple(outer + inner), True


STROKE = 0.2  # glyph stroke width, fraction of the glyph height
GLYPHS: dict[str, tuple[Shape, ...]] = {
    "E": (
        _rect(0, 0, STROKE, 1),
        _rect(0, 0, 0.9, STROKE),
        _rect(0, 0.41, 0.78, 0.59),
        _rect(0, 1 - STROKE, 0.9, 1),
    ),
    "P": (
        _rect(0, 0, STROKE, 1),
        _rect(0, 0, 0.5, STROKE),
        _rect(0, 0.46, 0.5, 0.46 + STROKE),
        _arc_band(0.5, 0.33, 0.42, 0.33, STROKE, -90, 90),
    ),
    "A": (
        (((0.0, 1.0), (0.39, 0.0), (0.61, 0.0), (0.24, 1.0)), True),
        (((1.0, 1.0), (0.61, 0.0), (0.39, 0.0), (0.76, 1.0)), True),
        _rect(0.22, 0.6, 0.78, 0.6 + STROKE * 0.85),
    ),
    "L": (_rect(0, 0, STROKE, 1), _rect(0, 1 - STROKE, 0.85, 1)),
    "I": (_rect(0.4, 0, 0.6, 1),),
    "C": (_arc_band(0.55, 0.5, 0.5, 0.5, STROKE, 40, 320),),
    "H": (_rect(0, 0, STROKE, 1), _rect(1 - STROKE, 0, 1, 1), _rect(0, 0.4, 1, 0.6)),
    "T": (_rect(0, 0, 1, STROKE), _rect(0.4, 0, 0.6, 1)),
}


@dataclass(frozen=True, slots=True)
class BrandDesign:
    """A shared mark: frame (oval ring or box) and text, in a unit box of ``aspect`` = width / height."""

    name: str
    aspect: float
    width_fraction: tuple[float, float]  # printed width relative to the face width
    oval: bool
    rim: float  # frame thickness, fraction of the mark height
    texts: tuple[tuple[str, Rect], ...]  # text and its box inside the unit box
    dividers: tuple[Rect, ...] = ()


EPAL_OVAL = BrandDesign("epal", 1.85, (0.68, 0.86), True, 0.045, (("EPAL", (0.19, 0.25, 0.81, 0.75)),))
IPPC_BOX = BrandDesign(
    "ippc",
    1.55,
    (0.42, 0.58),
    False,
    0.05,
    (("IPPC", (0.06, 0.7, 0.4, 0.9)), ("HT", (0.52, 0.3, 0.9, 0.7))),
    dividers=((0.44, 0.0, 0.47, 1.0),),
)


def _design_shapes(design: BrandDesign) -> list[Shape]:
    """The design as polygons in its unit box (x right, y down), solid and hole shapes in drawing order."""
    shapes: list[Shape] = []
    rim_x, rim_y = design.rim / design.aspect, design.rim
    if design.oval:
        steps = 48
        ring = [
            (0.5 + 0.5 * math.cos(2 * math.pi * i / steps), 0.5 + 0.5 * math.sin(2 * math.pi * i / steps))
            for i in range(steps)
        ]
        hole = [
            (
                0.5 + (0.5 - rim_x) * math.cos(2 * math.pi * i / steps),
                0.5 + (0.5 - rim_y) * math.sin(2 * math.pi * i / steps),
            )
            for i in range(steps)
        ]
        shapes += [(tuple(ring), True), (tuple(hole), False)]
    else:
        shapes += [_rect(0, 0, 1, 1), (_rect(rim_x, rim_y, 1 - rim_x, 1 - rim_y)[0], False)]
    shapes += [_rect(*divider) for divider in design.dividers]
    for text, (x0, y0, x1, y1) in design.texts:
        advance = (x1 - x0) / len(text)
        glyph_w = advance * 0.8
        for index, char in enumerate(text):
            left = x0 + index * advance + (advance - glyph_w) / 2
            for points, solid in GLYPHS[char]:
                shapes.append((tuple((left + gx * glyph_w, y0 + gy * (y1 - y0)) for gx, gy in points), solid))
    return shapes


def brand_mark(
    albedo: FloatArray, height: FloatArray, rng: np.random.Generator, box: Box, design: BrandDesign
) -> None:
    """Print ``design`` near the face centre, burnt in (dark brown, debossed, a halo) or inked (blotchy)."""
    x0, y0, x1, y1 = box
    face_w, face_h = x1 - x0, y1 - y0
    width = min(face_w * rng.uniform(*design.width_fraction), face_h * 0.9 * design.aspect)
    mark_h = width / design.aspect
    centre = ((x0 + x1) / 2 + rng.normal(0, 0.05) * face_w, (y0 + y1) / 2 + rng.normal(0, 0.05) * face_h)
    angle = math.radians(rng.normal(0, 2.0))
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    shapes = _design_shapes(design)

    def place(ux: float, uy: float) -> Point:
        px, py = (ux - 0.5) * width, (uy - 0.5) * mark_h
        return centre[0] + px * cos_a - py * sin_a, centre[1] + px * sin_a + py * cos_a

    def paint(draw: ImageDraw.ImageDraw, to_mask: Callable[[float, float], Point]) -> None:
        for points, solid in shapes:
            draw.polygon([to_mask(*place(*p)) for p in points], fill=255 if solid else 0)

    corners = [place(0, 0), place(1, 0), place(1, 1), place(0, 1)]
    burnt = rng.random() < 0.5
    patch = draw_patch(albedo.shape[:2], outline_bounds(corners), paint, blur=0.5 if burnt else 0.3)
    # pressure falls off towards one side of the stamp
    rows, cols = patch.alpha.shape
    ramp_angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-1, 1, cols)[None, :] * math.cos(ramp_angle) + np.linspace(-1, 1, rows)[
        :, None
    ] * math.sin(ramp_angle)
    pressure = np.clip(1.0 - rng.uniform(0.0, 0.3) * (ramp + 1) / 2, 0.0, 1.0)
    view = albedo[patch.rows, patch.cols]
    if burnt:
        strength = patch.alpha * pressure * rng.uniform(0.8, 0.95)
        halo = (
            np.asarray(
                Image.fromarray((patch.alpha * 255).astype(np.uint8)).filter(
                    ImageFilter.GaussianBlur(rng.uniform(1.5, 3.5))
                ),
                dtype=np.float32,
            )
            / 255.0
        )
        scorch = np.array([0.55, 0.42, 0.32], np.float32)
        view *= 1.0 - (0.2 * halo * pressure)[..., None] * (1 - scorch)
        view[:] = view * (1 - strength[..., None]) + strength[..., None] * view * scorch * 0.22
        height[patch.rows, patch.cols] -= 0.8 * patch.alpha * pressure
    else:
        blotch = np.clip(0.85 + 0.3 * power_law_noise(rng, (rows, cols), 1.2), 0.0, 1.0)
        strength = (patch.alpha * pressure * blotch * rng.uniform(0.8, 0.97))[..., None]
        ink = np.array([0.04, 0.04, 0.05], np.float32) * rng.uniform(0.6, 1.5)
        view[:] = view * (1 - strength) + strength * ink


def nail_head(
    albedo: FloatArray, height: FloatArray, gloss: FloatArray, rng: np.random.Generator, box: Box
) -> None:
    """A domed steel nail head with a ring groove, part rusty: the same nail type on every pallet."""
    face_h = box[3] - box[1]
    centre = _inside(rng, box, 0.1)
    radius = rng.uniform(0.028, 0.038) * face_h
    span = int(radius) + 3
    cx, cy = int(centre[0]), int(centre[1])
    rows = slice(max(0, cy - span), min(albedo.shape[0], cy + span + 1))
    cols = slice(max(0, cx - span), min(albedo.shape[1], cx + span + 1))
    ys, xs = np.mgrid[rows, cols].astype(np.float32)
    distance = np.hypot(xs - centre[0], ys - centre[1]) / radius
    inside = np.clip((1.0 - distance) * radius + 0.5, 0.0, 1.0)
    groove = np.exp(-(((distance - 0.62) / 0.08) ** 2))
    rust = np.clip(rng.uniform(0.0, 0.7) + 0.3 * rng.standard_normal(distance.shape), 0.0, 1.0)
    steel = np.array([0.42, 0.42, 0.43], np.float32) * rng.uniform(0.8, 1.1)
    colour = steel * (1 - rust[..., None]) + np.array([0.45, 0.26, 0.14], np.float32) * rust[..., None]
    colour = colour * (1.0 - 0.45 * groove[..., None])
    alpha = inside[..., None]
    albedo[rows, cols] = albedo[rows, cols] * (1 - alpha) + alpha * colour
    dome = np.sqrt(np.clip(1.0 - distance**2, 0.0, 1.0)) * 1.2
    height[rows, cols] = height[rows, cols] * (1 - inside) + inside * (height[rows, cols].max() + dome)
    gloss[rows, cols] = np.maximum(gloss[rows, cols], inside * (1 - rust) * 0.8)


def control_staple(
    albedo: FloatArray, height: FloatArray, gloss: FloatArray, rng: np.random.Generator, box: Box
) -> None:
    """The galvanised control staple driven into a middle block: a short bright bar with dark ends."""
    x0, y0, x1, y1 = box
    face_w, face_h = x1 - x0, y1 - y0
    centre = ((x0 + x1) / 2 + rng.uniform(-0.3, 0.3) * face_w, y0 + rng.uniform(0.12, 0.25) * face_h)
    if rng.random() < 0.5:
        centre = (centre[0], y1 - (centre[1] - y0))
    length, thickness = rng.uniform(0.12, 0.16) * face_w, rng.uniform(0.025, 0.035) * face_h
    angle = rng.normal(0, 0.05)
    bar = [
        (
            centre[0] + (u * math.cos(angle) - v * math.sin(angle)),
            centre[1] + (u * math.sin(angle) + v * math.cos(angle)),
        )
        for u, v in (
            (-length / 2, -thickness / 2),
            (length / 2, -thickness / 2),
            (length / 2, thickness / 2),
            (-length / 2, thickness / 2),
        )
    ]
    patch = draw_patch(albedo.shape[:2], outline_bounds(bar), polygon_painter(bar), blur=0.3)
    alpha = patch.alpha[..., None]
    zinc = np.array([0.58, 0.6, 0.62], np.float32) * rng.uniform(0.8, 1.1)
    view = albedo[patch.rows, patch.cols]
    view[:] = view * (1 - alpha) + alpha * zinc
    height[patch.rows, patch.cols] += 0.8 * patch.alpha
    gloss[patch.rows, patch.cols] = np.maximum(gloss[patch.rows, patch.cols], patch.alpha * 0.9)
