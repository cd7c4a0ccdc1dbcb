"""Family ``chipsplat``: chips splatted as additive sliver kernels, 2-D marks, four station styles.

The project's first generator. Wood: additive fields of sliver-shaped chip kernels plus low-frequency
mottling (20 % solid wood with growth rings); ageing: faded contrast, grime, darkening, stains, scratches;
capture: a perspective quad cut around the face, Gaussian focus blur, kernel motion blur, exposure and white
balance gains, luminance and 2x2 chroma noise, gamma/contrast table, JPEG 45-96.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from models.synth.families.chipsplat.capture import (
    CameraSetup,
    FrameConditions,
    encode_jpeg,
    render_capture,
    render_capture_array,
)
from models.synth.families.chipsplat.styles import STYLES, StationStyle
from models.synth.families.chipsplat.texture import (
    TAG_CAMERA,
    TAG_FRAME,
    TAG_STYLE,
    BlockTexture,
    age_block,
    render_block,
)
from models.synth.family import BlockKey, Size, SynthFamily
from models.synth.seeding import derive_rng


@dataclass(frozen=True, slots=True)
class StationCamera:
    """A camera of one station style, set up for one pallet."""

    style: StationStyle
    setup: CameraSetup


class ChipsplatFamily(SynthFamily[BlockTexture, StationCamera]):
    name = "chipsplat"
    description = (
        "additive sliver-kernel chips, 2-D marks, station styles with quad crops and gain/noise/JPEG"
    )
    pallet_prefix = "P"
    styles: ClassVar[Mapping[str, str]] = {style.name: style.description for style in STYLES.values()}

    def new_block(self, key: BlockKey, size: Size) -> BlockTexture:
        return render_block(key.seed, key.pallet_index, key.position, size)

    def aged_block(self, block: BlockTexture, key: BlockKey) -> BlockTexture:
        return age_block(block, key.seed, key.pallet_index, key.position)

    def material(self, block: BlockTexture) -> str:
        return block.material

    def camera(self, seed: int, pallet_index: int, camera_index: int, styles: Sequence[str]) -> StationCamera:
        # drawn per pallet and camera: with several styles one pallet is seen by different stations
        choice = derive_rng(seed, TAG_STYLE, pallet_index, camera_index)
        style = STYLES[styles[int(choice.integers(len(styles)))]]
        return StationCamera(
            style, CameraSetup.sample(style, derive_rng(seed, TAG_CAMERA, pallet_index, camera_index))
        )

    def camera_style(self, camera: StationCamera) -> str:
        return camera.style.name

    def capture_frames(
        self,
        block: BlockTexture,
        camera: StationCamera,
        key: BlockKey,
        camera_index: int,
        frames: Sequence[int],
        size: Size,
    ) -> list[bytes]:
        files = []
        for frame in frames:
            stream = derive_rng(key.seed, TAG_FRAME, key.pallet_index, key.position, camera_index, frame)
            conditions = FrameConditions.sample(camera.style, stream)
            pixels = render_capture_array(block, camera.setup, conditions, size)
            files.append(encode_jpeg(pixels, conditions.jpeg_quality))
        return files


__all__ = [
    "STYLES",
    "BlockTexture",
    "CameraSetup",
    "ChipsplatFamily",
    "FrameConditions",
    "StationCamera",
    "StationStyle",
    "age_block",
    "render_block",
    "render_capture",
    "render_capture_array",
]
