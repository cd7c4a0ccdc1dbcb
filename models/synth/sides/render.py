"""One side view: a posed camera sees a pallet's long side with its three blocks over a station background.

Truth per block: the projected face quad (top-left, top-right, bottom-right, bottom-left), its axis-aligned
box in pixels, the pallet position it is (0-2 on side 0, 3-5 on side 1, left to right in the image) and the
share of its face not hidden by straps or forks. Boxes are amodal: a partly covered block keeps its box.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from models.synth.family import BlockKey
from models.synth.registry import get_family
from models.synth.seeding import derive_rng
from models.synth.sides import geometry as geo
from models.synth.sides.cover import draw_film, draw_forks, draw_load, draw_straps
from models.synth.sides.pallet import PlaneCanvas, block_face, draw_pallet
from models.synth.sides.scene import BACKGROUNDS, clutter

SIDES_KEY = 0x51DE5  # first key of every side-view stream: never the numbers of a block or capture stream
TAG_SCENE, TAG_BACKGROUND = 1, 2
BLOCK_SIZE = (280, 175)
"""Capture size the blocks are rendered for: equal to the crop dataset's, so both share their blocks."""
EDGE_MARGIN = 4  # pixels every block keeps from the image border


@dataclass(frozen=True, slots=True)
class SideBlock:
    position: int  # on the pallet (0..5), as in the crop datasets
    identity: str  # "<pallet_id>/<position>"
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    quad: tuple[tuple[float, float], ...]  # four corners: top-left, top-right, bottom-right, bottom-left
    visible: float  # share of the face not covered by straps or forks

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "identity": self.identity,
            "box": [round(value, 2) for value in self.box],
            "quad": [[round(x, 2), round(y, 2)] for x, y in self.quad],
            "visible": round(self.visible, 3),
        }


@dataclass(frozen=True, slots=True)
class SideView:
    """A rendered side view (JPEG) and its truth; blocks are ordered left to right."""

    pallet_id: str
    side: int
    family: str
    background: str
    aged: bool
    width: int
    height: int
    blocks: tuple[SideBlock, ...]
    jpeg: bytes

    @property
    def relative_path(self) -> str:
        return f"images/{self.pallet_id}/side_{self.side}.jpg"

    def image(self) -> Image.Image:
        image = Image.open(io.BytesIO(self.jpeg))
        image.load()
        return image.convert("RGB")

    def record(self) -> dict[str, Any]:
        return {
            "path": self.relative_path,
            "pallet_id": self.pallet_id,
            "side": self.side,
            "family": self.family,
            "background": self.background,
            "aged": self.aged,
            "width": self.width,
            "height": self.height,
            "blocks": [block.to_dict() for block in self.blocks],
        }


def station_keys(station: int) -> tuple[int, ...]:
    """Extra stream keys of a camera station; station 0 has none and keeps the scenes of earlier datasets."""
    return (station,) if station else ()


def _family_key(family: str) -> int:
    return sum(ord(char) << (8 * index) for index, char in enumerate(family[:4]))


def _camera(rng: np.random.Generator, size: tuple[int, int]) -> geo.Camera:
    """A pose that keeps all three blocks in the frame: pallet 55-98 % of the width, yaw +-35 degrees."""
    width, height = size
    focal = (width / 2) / math.tan(math.radians(rng.uniform(45.0, 75.0)) / 2)
    fraction = rng.uniform(0.55, 0.98)
    target = np.array([rng.uniform(0.3, 0.7) * width, rng.uniform(0.4, 0.8) * height])
    rotation = geo.rotation(
        math.radians(rng.uniform(-35.0, 35.0)),
        math.radians(rng.uniform(-10.0, 25.0)),
        math.radians(float(np.clip(rng.normal(0.0, 3.0), -8.0, 8.0))),
    )
    centre = (width / 2, height / 2)
    corners = np.vstack([geo.rect_corners(geo.block_rect(index)) for index in range(geo.BLOCKS_PER_SIDE)])
    camera = geo.Camera(focal, centre, rotation, np.array([0.0, 0.0, 1.0]))
    for _ in range(20):
        distance = focal * geo.LENGTH / (fraction * width)
        translation = np.array(
            [(target[0] - centre[0]) * distance / focal, (target[1] - centre[1]) * distance / focal, distance]
        )
        camera = geo.Camera(focal, centre, rotation, translation)
        depth = (rotation[:, :2] @ (corners - [geo.LENGTH / 2, geo.HEIGHT / 2]).T)[2] + distance
        points = camera.project(corners)
        inside = (
            points[:, 0].min() >= EDGE_MARGIN
            and points[:, 1].min() >= EDGE_MARGIN
            and points[:, 0].max() <= width - EDGE_MARGIN
            and points[:, 1].max() <= height - EDGE_MARGIN
        )
        if inside and depth.min() > 0.2 * distance:
            return camera
        fraction *= 0.92
        target = 0.7 * target + 0.3 * np.array(centre)
    return camera


def _raster_scale(camera: geo.Camera, top: float) -> float:
    """Raster pixels per millimetre: a little finer than the finest projected edge (no aliasing, no waste)."""
    corners = geo.rect_corners((-80.0, top, geo.LENGTH + 80.0, geo.HEIGHT))
    points = camera.project(corners)
    sizes = [geo.LENGTH + 160.0, geo.HEIGHT - top] * 2
    ratios = [
        float(np.linalg.norm(points[(index + 1) % 4] - points[index])) / sizes[index] for index in range(4)
    ]
    return float(np.clip(1.25 * max(ratios), 0.2, 3.0))


def _lighting(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Multiplicative light: exposure, white balance, a directional gradient, vignetting, a cast shadow."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    x, y = x / cols - 0.5, y / rows - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    field = 1 + rng.uniform(0.0, 0.6) * (math.cos(angle) * x + math.sin(angle) * y)
    field *= 1 - rng.uniform(0.0, 0.5) * (x * x + y * y) * 2
    if rng.random() < 0.3:  # the shadow of something out of view, soft-edged
        normal = rng.uniform(0, 2 * math.pi)
        offset = rng.uniform(-0.3, 0.3)
        edge = (math.cos(normal) * x + math.sin(normal) * y - offset) / rng.uniform(0.01, 0.08)
        field *= 1 - rng.uniform(0.2, 0.55) / (1 + np.exp(-np.clip(edge, -30, 30)))
    gains = np.array([rng.uniform(0.8, 1.2), 1.0, rng.uniform(0.75, 1.2)], np.float32) * rng.uniform(
        0.45, 1.4
    )
    return (field[..., None] * gains).astype(np.float32)


def _blur(image: np.ndarray, rng: np.random.Generator, width: int) -> np.ndarray:
    scale = width / 1280
    if rng.random() < 0.4:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 2.0) * scale)
    if rng.random() < 0.25:
        length = max(2, round(rng.uniform(3, 12) * scale))
        kernel: np.ndarray = np.zeros((length, length), np.float32)
        kernel[length // 2] = 1.0
        rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(-30, 30), 1.0)
        kernel = cv2.warpAffine(kernel, rotation, (length, length))
        image = cv2.filter2D(image, -1, kernel / max(kernel.sum(), 1e-6))
    return image


def render_side(
    seed: int,
    pallet_index: int,
    side: int,
    family: str,
    background: str,
    size: tuple[int, int] = (1280, 720),
    *,
    aged: bool = False,
    block_size: tuple[int, int] = BLOCK_SIZE,
    station: int = 0,
) -> SideView:
    """Side ``side`` (0: blocks 0-2, 1: blocks 3-5) of pallet ``pallet_index``; deterministic.

    Another ``station`` shows the same blocks in a scene of its own (camera pose, load, covers, background,
    light, blur, noise, JPEG quality), as a second camera station photographing the pallet would.
    """
    if side not in (0, 1):
        raise ValueError("side must be 0 or 1")
    if station < 0:
        raise ValueError("station must not be negative")
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; choose from {', '.join(BACKGROUNDS)}")
    generator = get_family(family)
    width, height = size
    rng = derive_rng(
        seed, SIDES_KEY, TAG_SCENE, _family_key(family), pallet_index, side, *station_keys(station)
    )
    faces = []
    positions = [side * geo.BLOCKS_PER_SIDE + index for index in range(geo.BLOCKS_PER_SIDE)]
    for position in positions:
        key = BlockKey(seed, pallet_index, position)
        block = generator.new_block(key, block_size)
        faces.append(block_face(generator.aged_block(block, key) if aged else block))

    camera = _camera(rng, size)
    load = 0.0 if rng.random() < 0.3 else float(rng.uniform(150.0, 1200.0))
    top = -load - 10.0
    canvas = PlaneCanvas(_raster_scale(camera, top), (-80.0, geo.LENGTH + 80.0), (top, geo.HEIGHT + 2.0))
    draw_pallet(canvas, rng, faces)
    draw_load(canvas, rng, load)
    if load > 0 and rng.random() < 0.35:
        reach = rng.choice([0.0, geo.BOARD, geo.BLOCK_TOP + rng.uniform(0.0, 0.6) * geo.BLOCK_HEIGHT])
        draw_film(canvas, rng, -load, float(reach))
    if rng.random() < 0.25:
        draw_straps(canvas, rng, -load)
    if rng.random() < 0.3:
        draw_forks(canvas, rng)
    raster = canvas.finish()

    plane_to_image = camera.plane_to_image()
    bottom = camera.project(np.array([[0.0, geo.HEIGHT], [geo.LENGTH, geo.HEIGHT], [600.0, 0.0]]))
    pallet_rows = max(1.0, float(bottom[:2, 1].mean() - bottom[2, 1]))
    floor_line = int(
        np.clip(bottom[:2, 1].mean() - rng.uniform(0.0, 1.5) * pallet_rows, 0.1 * height, height - 5)
    )
    style = derive_rng(
        seed, SIDES_KEY, TAG_BACKGROUND, _family_key(family), pallet_index, side, *station_keys(station)
    )
    image = BACKGROUNDS[background](style, size, floor_line)
    clutter(image, style)

    shadow_quad = camera.project(
        geo.rect_corners((-40.0, geo.HEIGHT - 30.0, geo.LENGTH + 40.0, geo.HEIGHT + 45.0))
    )
    shadow: np.ndarray = np.zeros((height, width), np.float32)
    cv2.fillPoly(shadow, [np.round(shadow_quad).astype(np.int32)], 1.0)
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(1.0, pallet_rows * 0.15))
    image *= (1 - rng.uniform(0.3, 0.7) * shadow)[..., None]

    warp = plane_to_image @ raster.raster_to_plane()
    layer = cv2.warpPerspective(
        raster.rgba, warp, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    alpha = layer[..., 3:4]
    image = image * (1 - alpha) + layer[..., :3] * alpha
    image *= _lighting(rng, (height, width))
    image = _blur(image, rng, width)
    image += rng.standard_normal(image.shape).astype(np.float32) * rng.uniform(0.004, 0.035)
    pixels = (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(rng.integers(35, 96)))

    identifier = generator.pallet_id(pallet_index)
    blocks = []
    for index, position in enumerate(positions):
        rect = geo.block_rect(index)
        quad = camera.project(geo.rect_corners(rect))
        box = geo.box_of(quad)
        box = (max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3]))
        covered = raster.cover[canvas.window(*rect)]
        blocks.append(
            SideBlock(
                position=position,
                identity=f"{identifier}/{position}",
                box=box,
                quad=tuple((float(x), float(y)) for x, y in quad),
                visible=1.0 - float(covered.mean()) if covered.size else 1.0,
            )
        )
    return SideView(
        identifier, side, family, background, aged, width, height, tuple(blocks), buffer.getvalue()
    )
