"""Shared stamp designs (EPAL/EUR ovals, IPPC treatment mark) drawn as strokes.

Every pallet carries one of these few designs, so they are distractors, never fingerprints. They are defined
as polylines in a unit box (x right, y down) so they render identically everywhere without depending on fonts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import ImageDraw

Polyline = tuple[tuple[float, float], ...]


def _arc(
    cx: float, cy: float, rx: float, ry: float, start_deg: float, end_deg: float, steps: int
) -> Polyline:
    return tuple(
        (
            cx + rx * math.cos(math.radians(start_deg + (end_deg - start_deg) * i / steps)),
            cy + ry * math.sin(math.radians(start_deg + (end_deg - start_deg) * i / steps)),
        )
        for i in range(steps + 1)
    )


_P_BOWL: Polyline = ((0.0, 1.0), (0.0, 0.0), *_arc(0.55, 0.25, 0.4, 0.25, -90, 90, 8), (0.0, 0.5))

# Stroke glyphs in a unit box; only the letters the stamp designs use.
GLYPHS: dict[str, tuple[Polyline, ...]] = {
    "E": (((0.95, 0.0), (0.0, 0.0), (0.0, 1.0), (0.95, 1.0)), ((0.0, 0.5), (0.8, 0.5))),
    "P": (_P_BOWL,),
    "A": (((0.0, 1.0), (0.5, 0.0), (1.0, 1.0)), ((0.22, 0.64), (0.78, 0.64))),
    "L": (((0.0, 0.0), (0.0, 1.0), (0.95, 1.0)),),
    "U": (((0.0, 0.0), (0.0, 0.65), *_arc(0.5, 0.65, 0.5, 0.35, 180, 0, 10)[1:], (1.0, 0.0)),),
    "R": (_P_BOWL, ((0.45, 0.5), (1.0, 1.0))),
    "I": (((0.5, 0.0), (0.5, 1.0)),),
    "C": (_arc(0.55, 0.5, 0.5, 0.5, -50, -310, 14),),
    "H": (((0.0, 0.0), (0.0, 1.0)), ((1.0, 0.0), (1.0, 1.0)), ((0.0, 0.5), (1.0, 0.5))),
    "T": (((0.0, 0.0), (1.0, 0.0)), ((0.5, 0.0), (0.5, 1.0))),
    "D": (((0.0, 0.0), (0.0, 1.0), (0.45, 1.0), *_arc(0.45, 0.5, 0.5, 0.5, 90, -90, 10)[1:], (0.0, 0.0)),),
}


def text_strokes(text: str, x0: float, y0: float, x1: float, y1: float) -> list[Polyline]:
    """Lay ``text`` out in the box, equal advance per glyph, as polylines in box coordinates."""
    count = len(text)
    advance = (x1 - x0) / count
    glyph_width = advance * 0.72
    strokes: list[Polyline] = []
    for index, char in enumerate(text):
        left = x0 + index * advance + (advance - glyph_width) / 2
        for line in GLYPHS[char]:
            strokes.append(tuple((left + gx * glyph_width, y0 + gy * (y1 - y0)) for gx, gy in line))
    return strokes


def _oval(inset: float = 0.0) -> Polyline:
    return _arc(0.5, 0.5, 0.5 - inset, 0.5 - inset * 1.75, 0, 360, 72)


def _wheat() -> list[Polyline]:
    stem: Polyline = ((0.2, 0.12), (0.2, 0.72))
    leaves = [((0.2, 0.2 + k * 0.14), (0.12, 0.12 + k * 0.14)) for k in range(4)]
    leaves += [((0.2, 0.2 + k * 0.14), (0.28, 0.12 + k * 0.14)) for k in range(4)]
    return [stem, *leaves]


@dataclass(frozen=True, slots=True)
class StampDesign:
    """A stamp: polylines in a unit box of the given width:height aspect."""

    name: str
    aspect: float
    width_fraction: tuple[float, float]  # printed width relative to the block face width
    strokes: tuple[Polyline, ...]


STAMP_DESIGNS: tuple[StampDesign, ...] = (
    StampDesign("epal", 1.8, (0.7, 0.9), (_oval(), *text_strokes("EPAL", 0.17, 0.22, 0.83, 0.78))),
    StampDesign("eur", 1.8, (0.65, 0.85), (_oval(), *text_strokes("EUR", 0.24, 0.22, 0.76, 0.78))),
    StampDesign(
        "epal_double_rim",
        1.7,
        (0.7, 0.88),
        (_oval(), _oval(0.035), *text_strokes("EPAL", 0.2, 0.25, 0.8, 0.75)),
    ),
    StampDesign(
        "ippc",
        1.6,
        (0.45, 0.62),
        (
            ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.0, 0.0)),
            ((0.4, 0.0), (0.4, 1.0)),
            *_wheat(),
            *text_strokes("IPPC", 0.04, 0.78, 0.36, 0.94),
            *text_strokes("DE", 0.5, 0.12, 0.9, 0.42),
            *text_strokes("HT", 0.5, 0.58, 0.9, 0.88),
        ),
    ),
)
# EPAL ovals dominate on real Euro pallets.
STAMP_WEIGHTS: tuple[float, ...] = (0.55, 0.2, 0.1, 0.15)


def draw_stamp(
    draw: ImageDraw.ImageDraw,
    design: StampDesign,
    *,
    centre: tuple[float, float],
    width: float,
    angle_deg: float,
    stroke: int,
    ink: int = 255,
) -> None:
    """Draw ``design`` onto a mask, ``width`` pixels wide, rotated about its centre."""
    height = width / design.aspect
    cos_a, sin_a = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    cx, cy = centre
    for line in design.strokes:
        points = []
        for ux, uy in line:
            px, py = (ux - 0.5) * width, (uy - 0.5) * height
            points.append((cx + px * cos_a - py * sin_a, cy + px * sin_a + py * cos_a))
        draw.line(points, fill=ink, width=stroke, joint="curve")
