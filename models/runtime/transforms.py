"""Inference preprocessing: the single place for the default input size and normalisation.

Block captures are wider than tall, so the default input is (height, width) = (96, 160). The values used to
train a model travel with its checkpoint (``CheckpointMetadata``); these are only the defaults for new models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

DEFAULT_IMAGE_SIZE: tuple[int, int] = (96, 160)
"""Default network input as (height, width)."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def inference_transform(
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """RGB convert, resize to ``image_size`` (height, width), to float tensor, normalise."""
    return v2.Compose(
        [
            v2.Lambda(to_rgb),
            v2.ToImage(),
            v2.Resize(image_size, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )
