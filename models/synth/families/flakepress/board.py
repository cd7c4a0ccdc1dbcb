"""The flakepress wood model: pressed particle board built from individually drawn flakes.

A block face is laid up like the real product: a bed of fine particles, then thousands of flakes, each a
torn polygon with its own size, elongation, orientation, species tone and brightness, pressed on top of the
earlier ones (later flakes cover earlier ones and sit higher), some with a dark glue seam along the edge,
pale fibre strands, bark bits and pits between the flakes. Every flake carries a height, so the face has a
relief that the cameras light in 3-D. Near the face boundary the board is compressed (striations parallel to
the edge) and chamfered. Around the face: the top and bottom deck boards and the dark fork openings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from models.synth.families.flakepress.noise import power_law_noise

FloatArray = np.ndarray
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in canvas pixels

FACE_SCALE = 1.3  # canvas pixels of the face per output pixel at a tight framing
MARGIN_X = 0.22  # fork openings left and right, fraction of the face width
MARGIN_Y = 0.26  # deck boards above and below, fraction of the face height
HEIGHT_LEVELS = 255.0  # the height channel of the flake drawing is 8-bit
RELIEF = 1.2  # canvas pixels of relief between the deepest pit and the top flake

# Wood species that end up in the chips: (R, G, B) reflectance of the fresh particle surface.
SPECIES_TONES: tuple[tuple[float, float, float], ...] = (
    (0.62, 0.5, 0.34),  # spruce / fir: pale yellow-brown
    (0.66, 0.48, 0.3),  # pine: warmer
    (0.46, 0.34, 0.23),  # hardwood: darker
    (0.5, 0.45, 0.38),  # recycled, greyed wood
    (0.56, 0.4, 0.26),  # reddish
)


@dataclass(frozen=True, slots=True)
class PressedBlock:
    """A block canvas: reflectance, relief and gloss (metal, resin) of the face and its surroundings."""

    albedo: FloatArray  # float32 (height, width, 3) in [0, 1]
    height: FloatArray  # float32 (height, width), canvas pixels, larger = nearer the camera
    gloss: FloatArray  # float32 (height, width), specular share in [0, 1]
    face: Box
    material: str


@dataclass(frozen=True, slots=True)
class BoardRecipe:
    """What differs between blocks before any flake is placed (drawn once per block)."""

    tones: FloatArray  # (k, 3) species tones of this block's chip mix
    tone_weights: FloatArray  # (k,)
    brightness: float
    flake_length: float  # median flake length in canvas pixels
    length_spread: float  # log-normal sigma of the flake length
    elongation: tuple[float, float]  # width / length range
    orientation: float  # preferred flake direction (radians)
    alignment: float  # von Mises concentration of the directions (0: random)
    coverage: float  # flake area / face area
    flake_contrast: float  # log-normal sigma of flake brightness
    glue_share: float  # share of flakes with a dark glue seam
    strand_density: float  # pale fibre strands per 100 square pixels
    bark_density: float  # bark bits per 1000 square pixels
    pit_density: float  # pits per 1000 square pixels

    @classmethod
    def sample(cls, rng: np.random.Generator) -> BoardRecipe:
        count = int(rng.integers(2, 5))
        chosen = rng.choice(len(SPECIES_TONES), size=count, replace=False)
        tones = np.array([SPECIES_TONES[index] for index in chosen], np.float32)
        tones *= rng.normal(1.0, 0.05, tones.shape).astype(np.float32)
        return cls(
            tones=tones,
            tone_weights=rng.dirichlet(np.full(count, 1.5)),
            brightness=float(rng.lognormal(0.0, 0.15)),
            flake_length=float(rng.uniform(7.0, 13.0)),
            length_spread=float(rng.uniform(0.35, 0.6)),
            elongation=(float(rng.uniform(0.15, 0.25)), float(rng.uniform(0.35, 0.6))),
            orientation=float(rng.uniform(0.0, math.pi)),
            alignment=float(rng.choice([0.0, rng.uniform(0.2, 1.5)])),
            coverage=float(rng.uniform(0.9, 1.4)),
            flake_contrast=float(rng.uniform(0.12, 0.28)),
            glue_share=float(rng.uniform(0.05, 0.35)),
            strand_density=float(rng.uniform(0.15, 0.5)),
            bark_density=float(rng.uniform(0.0, 1.5)),
            pit_density=float(rng.uniform(0.5, 3.0)),
        )


def canvas_layout(output_size: tuple[int, int]) -> tuple[tuple[int, int], Box]:
    """Canvas (height, width) and face box for captures of ``output_size`` = (width, height)."""
    face_w, face_h = output_size[0] * FACE_SCALE, output_size[1] * FACE_SCALE
    margin_x, margin_y = face_w * MARGIN_X, face_h * MARGIN_Y
    shape = (round(face_h + 2 * margin_y), round(face_w + 2 * margin_x))
    return shape, (margin_x, margin_y, margin_x + face_w, margin_y + face_h)


def _torn_polygons(
    rng: np.random.Generator, centres: FloatArray, lengths: FloatArray, widths: FloatArray, angles: FloatArray
) -> FloatArray:
    """(n, 2 * corners) flat polygon coordinates: ellipses with torn, uneven outlines."""
    corners = 7
    theta = np.linspace(0.0, 2 * math.pi, corners, endpoint=False) + rng.uniform(0, 1, (len(lengths), 1))
    torn = 1.0 + 0.28 * rng.standard_normal((len(lengths), corners))
    along = np.cos(theta) * (lengths[:, None] / 2) * torn
    across = np.sin(theta) * (widths[:, None] / 2) * torn
    cos_a, sin_a = np.cos(angles)[:, None], np.sin(angles)[:, None]
    xs = centres[:, :1] + along * cos_a - across * sin_a
    ys = centres[:, 1:] + along * sin_a + across * cos_a
    return np.stack([xs, ys], axis=2).reshape(len(lengths), 2 * corners)


def _colours(rng: np.random.Generator, recipe: BoardRecipe, count: int, contrast: float) -> FloatArray:
    """(count, 3) flake colours: a species tone, a brightness and a slight hue of their own."""
    species = rng.choice(len(recipe.tones), size=count, p=recipe.tone_weights)
    brightness = rng.lognormal(0.0, contrast, (count, 1)) * recipe.brightness
    hue = rng.normal(1.0, 0.035, (count, 3))
    return np.clip(recipe.tones[species] * brightness * hue, 0.0, 1.0)


def _rgba(colours: FloatArray, heights: FloatArray) -> list[tuple[int, int, int, int]]:
    values = np.concatenate([colours * 255.0, heights[:, None] * HEIGHT_LEVELS], axis=1)
    return [tuple(row) for row in np.clip(values + 0.5, 0, 255).astype(np.int64).tolist()]


def flake_face(
    rng: np.random.Generator, recipe: BoardRecipe, shape: tuple[int, int]
) -> tuple[FloatArray, FloatArray]:
    """Albedo (h, w, 3) and height (h, w) of a pressed face of ``shape``, drawn flake by flake."""
    height, width = shape
    area = height * width
    # bed of fine particles: 2x2-pixel specks of the species tones over a cloudy mottle
    fine_shape = (height // 2 + 1, width // 2 + 1)
    cumulative = np.cumsum(recipe.tone_weights)
    species = np.minimum(np.searchsorted(cumulative, rng.random(fine_shape)), len(recipe.tones) - 1)
    shade = np.exp(rng.standard_normal(fine_shape, dtype=np.float32) * (recipe.flake_contrast * 1.4))
    fines = recipe.tones[species] * (shade * recipe.brightness)[..., None]
    fines = fines.repeat(2, axis=0).repeat(2, axis=1)[:height, :width]
    mottle = 1.0 + 0.1 * power_law_noise(rng, shape, 2.6, coarse=4)
    bed_height = np.clip(0.25 + 0.08 * rng.standard_normal(shape), 0.05, 0.4)
    base = np.concatenate([fines * mottle[..., None] * 0.65, bed_height[..., None]], axis=2)
    canvas = Image.fromarray((np.clip(base, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="RGBA")
    draw = ImageDraw.Draw(canvas)

    # flakes, each pressed over the earlier ones: later = higher
    mean_area = (
        math.pi
        / 4
        * recipe.flake_length**2
        * math.exp(2 * recipe.length_spread**2)
        * np.mean(recipe.elongation)
    )
    count = int(recipe.coverage * area / mean_area)
    lengths = recipe.flake_length * rng.lognormal(0.0, recipe.length_spread, count)
    widths = lengths * rng.uniform(*recipe.elongation, count)
    angles = (
        recipe.orientation + rng.vonmises(0.0, recipe.alignment, count) / 2
        if recipe.alignment > 0
        else rng.uniform(0.0, math.pi, count)
    )
    centres = rng.uniform((-4.0, -4.0), (width + 4.0, height + 4.0), (count, 2))
    polygons = _torn_polygons(rng, centres, lengths, widths, np.asarray(angles)).round(1).tolist()
    colours = _colours(rng, recipe, count, recipe.flake_contrast)
    heights = np.clip(0.4 + 0.5 * np.arange(count) / count + rng.normal(0.0, 0.04, count), 0.3, 0.92)
    fills = _rgba(colours, heights)
    glued = rng.random(count) < recipe.glue_share
    seams = _rgba(colours * rng.uniform(0.35, 0.6), heights)
    for polygon, fill, seam, glue in zip(polygons, fills, seams, glued.tolist(), strict=True):
        draw.polygon(polygon, fill=fill, outline=seam if glue else None)

    # pale fibre strands lying on top
    strands = int(recipe.strand_density * area / 100)
    strand_length = rng.uniform(5.0, 20.0, strands)
    strand_angle = rng.uniform(0.0, math.pi, strands)
    starts = rng.uniform((0.0, 0.0), (width, height), (strands, 2))
    ends = starts + np.stack([np.cos(strand_angle), np.sin(strand_angle)], axis=1) * strand_length[:, None]
    lines = np.concatenate([starts, ends], axis=1).round(1).tolist()
    strand_fills = _rgba(
        np.clip(_colours(rng, recipe, strands, 0.1) * rng.uniform(1.4, 2.0, (strands, 1)), 0, 1),
        np.full(strands, 0.95),
    )
    strand_widths = np.where(rng.random(strands) < 0.15, 2, 1).tolist()
    for line, fill, stroke in zip(lines, strand_fills, strand_widths, strict=True):
        draw.line(line, fill=fill, width=stroke)

    # bark bits: small dark flakes; pits: deep dark gaps between flakes
    barks = int(recipe.bark_density * area / 1000)
    if barks:
        bark_polygons = (
            _torn_polygons(
                rng,
                rng.uniform((0.0, 0.0), (width, height), (barks, 2)),
                rng.uniform(3.0, 9.0, barks),
                rng.uniform(1.5, 3.5, barks),
                rng.uniform(0.0, math.pi, barks),
            )
            .round(1)
            .tolist()
        )
        bark_colours = np.array([0.2, 0.14, 0.1]) * rng.uniform(0.6, 1.3, (barks, 1))
        for polygon, fill in zip(bark_polygons, _rgba(bark_colours, np.full(barks, 0.9)), strict=True):
            draw.polygon(polygon, fill=fill)
    pits = int(recipe.pit_density * area / 1000)
    pit_xy = rng.uniform((0.0, 0.0), (width, height), (pits, 2))
    pit_radius = rng.uniform(0.6, 1.8, pits)
    boxes = (
        np.concatenate([pit_xy - pit_radius[:, None], pit_xy + pit_radius[:, None]], axis=1).round(1).tolist()
    )
    pit_fills = _rgba(np.array([0.08, 0.06, 0.05]) * rng.uniform(0.5, 1.5, (pits, 1)), np.zeros(pits))
    for box, fill in zip(boxes, pit_fills, strict=True):
        draw.ellipse(box, fill=fill)

    pixels = np.asarray(canvas, dtype=np.float32) / 255.0
    return pixels[..., :3].copy(), pixels[..., 3] * RELIEF


def pressed_edges(rng: np.random.Generator, albedo: FloatArray, height: FloatArray, box: Box) -> FloatArray:
    """Compress and chamfer the board near the face boundary; returns the face coverage (h, w) in [0, 1].

    Pressing squeezes the particles at the board edge into layers parallel to it (striations), the edge is
    rounded off (chamfer, lower relief), and the outline itself is ragged.
    """
    rows, cols = albedo.shape[:2]
    x0, y0, x1, y1 = box
    xs = np.arange(cols, dtype=np.float32)[None, :]
    ys = np.arange(rows, dtype=np.float32)[:, None]
    inside = np.minimum(np.minimum(xs - x0, x1 - xs), np.minimum(ys - y0, y1 - ys))
    ragged = 1.2 * power_law_noise(rng, (rows, cols), 1.5, coarse=2)
    coverage = np.clip(inside + ragged + 0.5, 0.0, 1.0)
    band = (y1 - y0) * rng.uniform(0.03, 0.08)
    depth = np.clip(1.0 - np.maximum(inside, 0.0) / band, 0.0, 1.0)
    period = rng.uniform(1.6, 3.2)
    waviness = 0.6 * power_law_noise(rng, (rows, cols), 2.0, coarse=4)
    striation = 0.5 + 0.5 * np.sin(2 * math.pi * (inside + waviness) / period)
    albedo *= (1.0 - rng.uniform(0.15, 0.35) * depth * striation)[..., None]
    albedo *= (1.0 - rng.uniform(0.1, 0.3) * depth**2)[..., None]
    height -= rng.uniform(1.0, 3.0) * depth**2
    return coverage


def _deck_board(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    """A sawn board seen from the side: grain lines running along it, one tone per board."""
    rows = shape[0]
    tone = np.array(SPECIES_TONES[int(rng.integers(len(SPECIES_TONES)))], np.float32) * rng.uniform(0.8, 1.15)
    grain = power_law_noise(rng, shape, 2.2, coarse=2, stretch=12.0)
    streaks = np.sin(2 * math.pi * (np.arange(rows)[:, None] / rng.uniform(3.0, 7.0) + 0.4 * grain))
    return tone * (1.0 - 0.08 * streaks - 0.06 * grain)[..., None]


def surroundings(rng: np.random.Generator, shape: tuple[int, int], box: Box) -> FloatArray:
    """Deck boards above and below the face (with a shadow gap), dark fork openings left and right."""
    rows, cols = shape
    albedo = np.empty((rows, cols, 3), np.float32)
    darkness = rng.uniform(0.02, 0.07)
    albedo[:] = darkness * (1.0 + 0.4 * power_law_noise(rng, shape, 2.4, coarse=8))[..., None]
    x0, y0, x1, y1 = box
    for top in (True, False):
        gap = rng.uniform(1.0, 6.0)
        start, stop = (0, int(y0 - gap)) if top else (int(y1 + gap), rows)
        if stop - start < 2 or rng.random() < 0.1:
            continue
        left = max(0, int(x0 - rng.uniform(0.0, 1.0) * x0))
        right = min(cols, int(x1 + rng.uniform(0.0, 1.0) * (cols - x1)))
        board = _deck_board(rng, (stop - start, right - left))
        albedo[start:stop, left:right] = board * rng.uniform(0.55, 1.0)
    return albedo
