"""Family ``flakepress``: particle board drawn flake by flake, lit in 3-D, shot by posed Bayer cameras.

Independent of ``chipsplat`` in every stage (see ``board``, ``marks``, ``ageing`` and ``camera``): wood from
thousands of individually drawn, occluding flakes with a relief; its own ageing (dirt in recesses, abrasion,
greying, tide marks, broken edges, new nail holes); its own capture model (pose, lens distortion, lamp,
auto-exposure, rolling shutter, Bayer noise and demosaicing, ISP, JPEG 30-92); its own rendering of the
shared EPAL/IPPC marks, nail heads and control staple.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from models.synth.families.flakepress import marks
from models.synth.families.flakepress.ageing import weather
from models.synth.families.flakepress.board import (
    BoardRecipe,
    PressedBlock,
    canvas_layout,
    flake_face,
    pressed_edges,
    surroundings,
)
from models.synth.families.flakepress.camera import STATIONS, Rig, Shot, capture, light_block
from models.synth.family import BlockKey, Size, SynthFamily
from models.synth.seeding import derive_rng

FAMILY_KEY = 0xF1A4E  # first key of every flakepress stream: never the same numbers as another family
TAG_BLOCK, TAG_AGE, TAG_STATION, TAG_RIG, TAG_SHOT = 1, 2, 3, 4, 5
EDGE = 6  # pixels around the face box rendered with it (ragged edge, chamfer)


def render_block(key: BlockKey, size: Size) -> PressedBlock:
    """The new block: flakes, pressed edges, identity marks, then the shared distractors."""
    rng = derive_rng(key.seed, FAMILY_KEY, TAG_BLOCK, key.pallet_index, key.position)
    shape, box = canvas_layout(size)
    top, left = max(0, int(box[1]) - EDGE), max(0, int(box[0]) - EDGE)
    bottom, right = min(shape[0], math.ceil(box[3]) + EDGE), min(shape[1], math.ceil(box[2]) + EDGE)
    local = (box[0] - left, box[1] - top, box[2] - left, box[3] - top)
    face_shape = (bottom - top, right - left)

    recipe = BoardRecipe.sample(rng)
    albedo, height = flake_face(rng, recipe, face_shape)
    gloss = np.zeros(face_shape, np.float32)
    coverage = pressed_edges(rng, albedo, height, local)
    for _ in range(int(rng.poisson(0.5))):
        marks.bark_inclusion(albedo, height, rng, local)
    for _ in range(int(rng.poisson(0.5))):
        marks.oil_soak(albedo, rng, local)
    if rng.random() < 0.3:
        marks.crayon_tally(albedo, height, rng, local)
    for _ in range(int(rng.poisson(0.8))):
        marks.nail_hole(albedo, height, rng, local, splinters=False)
    for _ in range(int(rng.poisson(0.7))):
        marks.edge_chip(albedo, height, rng, local, fresh=False)
    # distractors: the same designs on every pallet, at block-specific places
    middle = key.position not in marks.CORNER_POSITIONS
    marks.brand_mark(albedo, height, rng, local, marks.IPPC_BOX if middle else marks.EPAL_OVAL)
    if middle:
        marks.control_staple(albedo, height, gloss, rng, local)
    for _ in range(int(rng.integers(1, 3)) if middle else int(rng.integers(0, 3))):
        marks.nail_head(albedo, height, gloss, rng, local)

    canvas = surroundings(rng, shape, box)
    relief = np.zeros(shape, np.float32)
    shine = np.zeros(shape, np.float32)
    alpha = coverage[..., None]
    view = canvas[top:bottom, left:right]
    view[:] = albedo * alpha + view * (1 - alpha)
    relief[top:bottom, left:right] = height * coverage
    shine[top:bottom, left:right] = gloss * coverage
    return PressedBlock(np.clip(canvas, 0.0, 1.0), relief, shine, box, "flakeboard")


@dataclass(frozen=True, slots=True)
class FlakepressCamera:
    style: str
    rig: Rig


class FlakepressFamily(SynthFamily[PressedBlock, FlakepressCamera]):
    name = "flakepress"
    description = "flakes drawn one by one with relief, 3-D lamp, posed lens + Bayer sensor + ISP, own ageing"
    pallet_prefix = "F"
    styles: ClassVar[Mapping[str, str]] = {station.name: station.description for station in STATIONS.values()}

    def new_block(self, key: BlockKey, size: Size) -> PressedBlock:
        return render_block(key, size)

    def aged_block(self, block: PressedBlock, key: BlockKey) -> PressedBlock:
        return weather(block, derive_rng(key.seed, FAMILY_KEY, TAG_AGE, key.pallet_index, key.position))

    def material(self, block: PressedBlock) -> str:
        return block.material

    def camera(
        self, seed: int, pallet_index: int, camera_index: int, styles: Sequence[str]
    ) -> FlakepressCamera:
        choice = derive_rng(seed, FAMILY_KEY, TAG_STATION, pallet_index, camera_index)
        style = styles[int(choice.integers(len(styles)))]
        rig = Rig.sample(STATIONS[style], derive_rng(seed, FAMILY_KEY, TAG_RIG, pallet_index, camera_index))
        return FlakepressCamera(style, rig)

    def camera_style(self, camera: FlakepressCamera) -> str:
        return camera.style

    def capture_frames(
        self,
        block: PressedBlock,
        camera: FlakepressCamera,
        key: BlockKey,
        camera_index: int,
        frames: Sequence[int],
        size: Size,
    ) -> list[bytes]:
        radiance = light_block(block, camera.rig)  # the lamp is fixed: once per block and camera
        files = []
        for frame in frames:
            stream = derive_rng(
                key.seed, FAMILY_KEY, TAG_SHOT, key.pallet_index, key.position, camera_index, frame
            )
            files.append(capture(radiance, block, camera.rig, Shot.sample(camera.rig.station, stream), size))
        return files


__all__ = ["STATIONS", "FlakepressCamera", "FlakepressFamily", "PressedBlock", "render_block"]
