"""Procedural backgrounds of a camera station, one function per style, drawn in image pixels.

Every style has a wall or backdrop above a floor line and a floor below it; the pallet is drawn over them.
``dock`` is held out of training by default (``HELD_OUT_BACKGROUND``): evaluating on it measures how the
detector copes with surroundings it never saw.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from models.synth.sides.textures import colour, fine_noise, smooth_noise

FloatArray = np.ndarray
Size = tuple[int, int]  # (width, height)


def _concrete_floor(rng: np.random.Generator, shape: tuple[int, int], vanishing_x: float) -> FloatArray:
    rows, cols = shape
    tone = np.array([0.55, 0.54, 0.52], np.float32) * rng.uniform(0.5, 1.2)
    if rng.random() < 0.3:  # coated floors
        tone = np.array(
            [[0.45, 0.5, 0.45], [0.5, 0.5, 0.55], [0.55, 0.45, 0.35]][rng.integers(3)], np.float32
        )
    floor = colour(tuple(tone), shape)
    stains = smooth_noise(rng, shape, 40, 80) * 0.08 + smooth_noise(rng, shape, 6, 10) * 0.04
    floor *= (1 + stains + 0.03 * fine_noise(rng, shape))[..., None]
    if rng.random() < 0.5:  # painted lane lines converging to a vanishing point above the floor
        paint = (0.85, 0.7, 0.1) if rng.random() < 0.7 else (0.9, 0.9, 0.88)
        for _ in range(int(rng.integers(1, 3))):
            bottom_x = rng.uniform(-0.5, 1.5) * cols
            top_x = vanishing_x + (bottom_x - vanishing_x) * 0.15
            thickness = max(2, int(rng.uniform(0.01, 0.03) * cols))
            cv2.line(floor, (int(top_x), 0), (int(bottom_x), rows), paint, thickness, lineType=cv2.LINE_AA)
    return floor


def _wall(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    tones = [(0.78, 0.78, 0.76), (0.6, 0.62, 0.62), (0.55, 0.65, 0.7), (0.7, 0.72, 0.6), (0.35, 0.35, 0.38)]
    wall = colour(tones[int(rng.integers(len(tones)))], shape) * rng.uniform(0.6, 1.15)
    wall *= (1 + 0.06 * smooth_noise(rng, shape, 60, 60) + 0.02 * fine_noise(rng, shape))[..., None]
    rows, cols = shape
    if rng.random() < 0.5:  # a painted dado band above the floor
        band = int(rows * rng.uniform(0.05, 0.25))
        wall[rows - band :] = np.array(
            [(0.3, 0.3, 0.32), (0.75, 0.6, 0.1), (0.2, 0.35, 0.25)][rng.integers(3)], np.float32
        )
    for _ in range(int(rng.integers(0, 3))):  # pillars, pipes, signs
        x = int(rng.uniform(0, cols))
        width = int(rng.uniform(0.01, 0.08) * cols)
        wall[:, x : x + width] *= rng.uniform(0.6, 1.3)
    return wall


def floor_style(rng: np.random.Generator, size: Size, floor_line: int) -> FloatArray:
    """A plain warehouse: painted wall, concrete floor with lane lines."""
    width, height = size
    image = np.empty((height, width, 3), np.float32)
    image[:floor_line] = _wall(rng, (floor_line, width))
    image[floor_line:] = _concrete_floor(rng, (height - floor_line, width), rng.uniform(0, width))
    return image


def racks_style(rng: np.random.Generator, size: Size, floor_line: int) -> FloatArray:
    """Pallet racking behind: uprights with holes, beams, goods on the shelves, dark gaps."""
    width, height = size
    image = floor_style(rng, size, floor_line)
    back = image[:floor_line]
    back *= rng.uniform(0.3, 0.6)
    upright = np.array([(0.1, 0.25, 0.6), (0.85, 0.45, 0.1), (0.55, 0.55, 0.55)][rng.integers(3)], np.float32)
    beam = np.array([(0.9, 0.45, 0.05), (0.85, 0.75, 0.1), (0.2, 0.3, 0.65)][rng.integers(3)], np.float32)
    bay = int(rng.uniform(0.25, 0.6) * width)
    start = int(rng.uniform(-bay, 0))
    levels = np.sort(rng.uniform(0.0, 1.0, int(rng.integers(1, 4)))) * floor_line
    for level in levels:
        for left in range(start, width, bay):
            for index in range(int(rng.integers(1, 4))):  # goods on this shelf
                w = int(bay * rng.uniform(0.2, 0.35))
                h = int(bay * rng.uniform(0.15, 0.4))
                x = left + int(index * bay / 3 + rng.uniform(0, 10))
                y1 = int(level)
                tone = np.array(
                    [(0.62, 0.47, 0.3), (0.85, 0.85, 0.82), (0.3, 0.4, 0.6), (0.6, 0.2, 0.15)][
                        rng.integers(4)
                    ],
                    np.float32,
                )
                if y1 - h >= 0:
                    back[max(0, y1 - h) : y1, max(0, x) : max(0, x + w)] = tone * rng.uniform(0.4, 0.9)
        thickness = max(3, int(rng.uniform(0.01, 0.025) * height))
        back[max(0, int(level)) : int(level) + thickness] = beam * rng.uniform(0.7, 1.1)
    thickness = max(4, int(rng.uniform(0.01, 0.02) * width))
    for left in range(start, width + bay, bay):
        back[:, max(0, left) : max(0, left + thickness)] = upright * rng.uniform(0.7, 1.1)
        for row in range(0, floor_line, max(4, thickness * 2)):
            hole = slice(max(0, left + thickness // 3), max(0, left + 2 * thickness // 3))
            back[row : row + max(2, thickness // 3), hole] *= 0.3
    image[:floor_line] = back
    return image


def yard_style(rng: np.random.Generator, size: Size, floor_line: int) -> FloatArray:
    """Outdoors: a clad building wall (corrugated), sometimes sky, asphalt in front."""
    width, height = size
    image = np.empty((height, width, 3), np.float32)
    wall_rows = floor_line
    cladding = np.array(
        [(0.75, 0.76, 0.78), (0.55, 0.6, 0.55), (0.3, 0.35, 0.45), (0.7, 0.65, 0.55)][rng.integers(4)],
        np.float32,
    )
    x = np.arange(width, dtype=np.float32)[None, :]
    pitch = rng.uniform(0.01, 0.04) * width
    ribs = 0.85 + 0.15 * np.sin(2 * np.pi * x / pitch)
    wall = cladding * rng.uniform(0.7, 1.2) * ribs[..., None] * np.ones((wall_rows, 1, 1), np.float32)
    wall *= (1 + 0.05 * smooth_noise(rng, (wall_rows, width), 30, 60))[..., None]
    if rng.random() < 0.5:
        sky = int(wall_rows * rng.uniform(0.1, 0.5))
        gradient = np.linspace(0.95, 0.75, sky, dtype=np.float32)[:, None, None]
        wall[:sky] = np.array([0.7, 0.8, 0.95], np.float32) * gradient * rng.uniform(0.85, 1.1)
    image[:floor_line] = wall
    asphalt = colour((0.3, 0.3, 0.31), (height - floor_line, width)) * rng.uniform(0.6, 1.4)
    asphalt *= (
        1 + 0.12 * fine_noise(rng, asphalt.shape[:2]) + 0.1 * smooth_noise(rng, asphalt.shape[:2], 30, 50)
    )[..., None]
    image[floor_line:] = asphalt
    return image


def dock_style(rng: np.random.Generator, size: Size, floor_line: int) -> FloatArray:
    """A loading dock: a sectional door with panels, a hazard-striped frame, rubber bumpers, a leveller."""
    width, height = size
    image = floor_style(rng, size, floor_line)
    door_left = int(rng.uniform(-0.2, 0.4) * width)
    door_right = door_left + int(rng.uniform(0.6, 1.2) * width)
    door_top = int(rng.uniform(-0.3, 0.2) * floor_line)
    left, right, top = max(0, door_left), min(width, door_right), max(0, door_top)
    panel = np.array(
        [(0.85, 0.86, 0.85), (0.55, 0.58, 0.6), (0.2, 0.35, 0.6), (0.7, 0.15, 0.1)][rng.integers(4)],
        np.float32,
    )
    door = colour(tuple(panel * rng.uniform(0.7, 1.1)), (floor_line - top, right - left))
    panel_height = max(8, int(rng.uniform(0.12, 0.25) * floor_line))
    for row in range(door_top % panel_height, door.shape[0], panel_height):
        door[row : row + 3] *= 0.6
        door[row + 3 : row + 5] *= 1.1
    if rng.random() < 0.4 and door.shape[0] > 2 * panel_height:  # a row of windows
        row = panel_height // 4 + panel_height
        for column in range(10, door.shape[1] - 40, max(40, door.shape[1] // 5)):
            door[row : row + panel_height // 2, column : column + door.shape[1] // 8] = 0.15
    image[top:floor_line, left:right] = door
    stripe = max(6, int(0.02 * width))
    for edge in (door_left - stripe, door_right):
        x0, x1 = max(0, edge), min(width, edge + stripe)
        if x1 <= x0:
            continue
        rows = np.arange(floor_line, dtype=np.int32)[:, None] + np.arange(x1 - x0, dtype=np.int32)[None, :]
        hazard = ((rows // max(4, stripe)) % 2).astype(np.float32)[..., None]
        image[:floor_line, x0:x1] = hazard * np.array([0.9, 0.75, 0.1], np.float32) + (1 - hazard) * 0.08
    bumper_height = int(rng.uniform(0.05, 0.15) * floor_line)
    for x in (door_left + int(0.05 * width), door_right - int(0.1 * width)):
        x0, x1 = max(0, x), min(width, x + int(0.05 * width))
        if x1 > x0:
            image[floor_line - bumper_height : floor_line, x0:x1] = 0.06
    leveller = image[floor_line : floor_line + int(0.25 * (height - floor_line)), left:right]
    if leveller.size:
        y, x = np.mgrid[0 : leveller.shape[0], 0 : leveller.shape[1]]
        chequer = ((x // 9 + y // 9) % 2).astype(np.float32)
        leveller[:] = (0.42 + 0.08 * chequer)[..., None] * rng.uniform(0.7, 1.2)
    return image


BACKGROUNDS: dict[str, Callable[[np.random.Generator, Size, int], FloatArray]] = {
    "floor": floor_style,
    "racks": racks_style,
    "yard": yard_style,
    "dock": dock_style,
}
HELD_OUT_BACKGROUND = "dock"
TRAINING_BACKGROUNDS: tuple[str, ...] = tuple(name for name in BACKGROUNDS if name != HELD_OUT_BACKGROUND)


def clutter(image: FloatArray, rng: np.random.Generator) -> None:
    """A few foreign objects anywhere: cables, signs, boxes (never pallet-like)."""
    height, width = image.shape[:2]
    for _ in range(int(rng.poisson(2.0))):
        tone = tuple(float(value) for value in rng.uniform(0.05, 0.95, 3))
        kind = rng.integers(3)
        x, y = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        if kind == 0:
            end = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
            cv2.line(image, (x, y), end, tone, max(1, int(rng.uniform(1, 6))), lineType=cv2.LINE_AA)
        elif kind == 1:
            w, h = int(rng.uniform(0.02, 0.1) * width), int(rng.uniform(0.02, 0.1) * height)
            cv2.rectangle(image, (x, y), (x + w, y + h), tone, -1)
        else:
            cv2.circle(image, (x, y), int(rng.uniform(0.005, 0.04) * width), tone, -1, lineType=cv2.LINE_AA)
