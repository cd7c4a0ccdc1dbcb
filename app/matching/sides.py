"""Side views in, block uploads out: the blocks of one or two side views, found by the block detector.

A side view (a pallet's long side, three blocks) is checked and decoded like an uploaded block image, the
detector runs on the model's worker thread (``ModelRunner.detect``), and each used detection is cut out
(``models.runtime.detector.crop_blocks``: the face quad rectified where it is a usable quad, else its box)
and encoded as the JPEG a station would have uploaded. From there the crops take the path of uploaded block
images: the same decoder, fingerprints and local features, stored block images, decision.

Positions follow upload order: the used blocks of side 0 left to right, then those of side 1 (three found on
each side: positions 0-2 and 3-5, as in the crop datasets). A side shows three blocks, so only its three
most confident detections are used; a side with fewer than ``PALLETREID_MIN_DETECTED_BLOCKS`` is refused
before anything is stored (:class:`BlocksNotFoundError`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.errors import InvalidRequestError, ServiceNotReadyError, image_errors_as_domain_errors
from app.matching.schemas import DetectedBlock, SideDetections
from app.metrics.stages import Stage, timed
from app.model_runner import ModelRunner
from app.settings import Settings
from models.runtime.detector import Detection, crop_blocks, encode_crop, used_detections
from models.runtime.images import decode_image, read_limited

MAX_SIDES = 2
"""A Euro pallet has two long sides."""


class BlocksNotFoundError(InvalidRequestError):
    """The detector found too few blocks on a side view (PALLETREID_MIN_DETECTED_BLOCKS per side)."""

    error_type = "blocks_not_found"


@dataclass(frozen=True)
class SideViewBlocks:
    """The blocks of the side views of one request, as uploaded block images would be."""

    side_images: list[bytes]
    """The side views exactly as received (what the request's idempotency digest covers)."""
    crops: list[bytes]
    """One encoded crop per used detection, in position order (the stored block images)."""
    images: list[Image.Image]
    """The crops decoded like uploaded blocks (what the fingerprint model and local features see)."""
    detections: list[SideDetections]


async def blocks_from_sides(
    sides: Sequence[UploadFile], runner: ModelRunner, settings: Settings
) -> SideViewBlocks:
    """Read, detect and crop the side views; raises the API's errors for bad input or too few blocks."""
    if not 1 <= len(sides) <= MAX_SIDES:
        raise InvalidRequestError(f"send 1 or {MAX_SIDES} side views, got {len(sides)}")
    if runner.detector_id is None:
        raise ServiceNotReadyError("no block detector is loaded; side views cannot be read")
    with timed(Stage.DECODE):
        outcomes = await asyncio.gather(
            *(run_in_threadpool(_load_side, side, index, settings) for index, side in enumerate(sides)),
            return_exceptions=True,
        )
    loaded = []
    for outcome in outcomes:  # the first refused side in upload order, as if decoded one by one
        if isinstance(outcome, BaseException):
            raise outcome
        loaded.append(outcome)
    side_images = [image for _, image in loaded]
    found = await runner.detect(side_images)
    used = [used_detections(detections) for detections in found]
    short = [
        f"sides[{index}]: {len(blocks)} found"
        for index, blocks in enumerate(used)
        if len(blocks) < settings.min_detected_blocks
    ]
    if short:
        raise BlocksNotFoundError(
            f"too few pallet blocks in the side views ({'; '.join(short)}; at least "
            f"{settings.min_detected_blocks} per side needed): photograph the whole long side, blocks in view"
        )
    cropped = await asyncio.gather(
        *(
            run_in_threadpool(_crops_as_uploads, image, blocks, index, settings)
            for index, (image, blocks) in enumerate(zip(side_images, used, strict=True))
        )
    )
    crops = [blob for side in cropped for blob, _ in side]
    positions: dict[int, int] = {}
    for blocks in used:
        for detection in blocks:
            positions[id(detection)] = len(positions)
    return SideViewBlocks(
        side_images=[blob for blob, _ in loaded],
        crops=crops,
        images=[image for side in cropped for _, image in side],
        detections=[
            SideDetections(
                side=index,
                width=image.width,
                height=image.height,
                blocks=[_detected_block(detection, positions.get(id(detection))) for detection in detections],
            )
            for index, (image, detections) in enumerate(zip(side_images, found, strict=True))
        ],
    )


def _load_side(side: UploadFile, index: int, settings: Settings) -> tuple[bytes, Image.Image]:
    """One side view, size-limited and decoded upright with the limits of block images."""
    name = f"sides[{index}]"
    with image_errors_as_domain_errors():
        blob = read_limited(side.file, max_bytes=settings.max_image_bytes, name=name)
        return blob, decode_image(blob, max_pixels=settings.max_image_pixels, name=name)


def _crops_as_uploads(
    image: Image.Image, detections: Sequence[Detection], side: int, settings: Settings
) -> list[tuple[bytes, Image.Image]]:
    """Each detection's crop encoded as a JPEG block image and decoded back, as an upload of it would be."""
    uploads = []
    for offset, crop in enumerate(crop_blocks(image, detections)):
        blob = encode_crop(crop)
        with image_errors_as_domain_errors():
            decoded = decode_image(
                blob, max_pixels=settings.max_image_pixels, name=f"sides[{side}] block {offset}"
            )
        uploads.append((blob, decoded))
    return uploads


def _detected_block(detection: Detection, position: int | None) -> DetectedBlock:
    return DetectedBlock(
        box=[round(value, 1) for value in detection.box],
        quad=[[round(x, 1), round(y, 1)] for x, y in detection.quad],
        confidence=round(detection.confidence, 4),
        position=position,
    )
