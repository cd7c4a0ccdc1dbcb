"""A Euro pallet's long side in millimetres, and the camera that sees it.

Looking at a long side (EN 13698-1: 1200 x 800 x 144 mm) from outside: the edge of the outer top deck board
(22 mm) over its whole length, under it the ends of the three cross boards (22 mm, one above each block),
the three blocks (145 mm wide, 78 mm tall: 0-145, 527.5-672.5 and 1055-1200 mm), the two fork openings
between them (382.5 x 100 mm) and the bottom board (22 mm). Plane coordinates: x from the left end of the
side, y downwards from the top of the deck board; the load stands at negative y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

LENGTH = 1200.0
BOARD = 22.0
BLOCK_WIDTH = 145.0
BLOCK_HEIGHT = 78.0
HEIGHT = 2 * BOARD + BLOCK_HEIGHT + BOARD  # 144 mm
BLOCK_TOP = 2 * BOARD
BLOCK_BOTTOM = BLOCK_TOP + BLOCK_HEIGHT
BLOCK_LEFTS = (0.0, (LENGTH - BLOCK_WIDTH) / 2, LENGTH - BLOCK_WIDTH)
BLOCKS_PER_SIDE = 3

Quad = np.ndarray  # float64 (4, 2): top-left, top-right, bottom-right, bottom-left


def block_rect(index: int) -> tuple[float, float, float, float]:
    """Block ``index`` (0..2, left to right) face as (x0, y0, x1, y1) in plane millimetres."""
    left = BLOCK_LEFTS[index]
    return left, BLOCK_TOP, left + BLOCK_WIDTH, BLOCK_BOTTOM


def rect_corners(rect: tuple[float, float, float, float]) -> Quad:
    x0, y0, x1, y1 = rect
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


@dataclass(frozen=True, slots=True)
class Camera:
    """A pinhole camera looking at the side plane: focal length in pixels, rotation and translation (mm).

    A plane point (x, y) maps to ``R @ (x - 600, y - 72, 0) + t`` in camera coordinates.
    """

    focal: float
    centre: tuple[float, float]
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)

    def plane_to_image(self) -> np.ndarray:
        """The 3x3 homography from plane millimetres to image pixels."""
        intrinsics = np.array(
            [[self.focal, 0.0, self.centre[0]], [0.0, self.focal, self.centre[1]], [0.0, 0.0, 1.0]]
        )
        shift = np.array([[1.0, 0.0, -LENGTH / 2], [0.0, 1.0, -HEIGHT / 2], [0.0, 0.0, 1.0]])
        extrinsic = np.column_stack([self.rotation[:, 0], self.rotation[:, 1], self.translation])
        homography = intrinsics @ extrinsic @ shift
        return np.asarray(homography / homography[2, 2], np.float64)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Plane points (n, 2) -> image points (n, 2)."""
        mapped = cv2.perspectiveTransform(points.reshape(-1, 1, 2).astype(np.float64), self.plane_to_image())
        return np.asarray(mapped.reshape(-1, 2), np.float64)


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera rotation from yaw (about the vertical), pitch (about the horizontal) and roll, in radians."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    yaw_matrix = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    pitch_matrix = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    roll_matrix = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return roll_matrix @ pitch_matrix @ yaw_matrix


def box_of(quad: Quad) -> tuple[float, float, float, float]:
    """The axis-aligned box (x0, y0, x1, y1) around a quad."""
    return (
        float(quad[:, 0].min()),
        float(quad[:, 1].min()),
        float(quad[:, 0].max()),
        float(quad[:, 1].max()),
    )
