"""Training augmentation: the inference preprocessing plus geometric and photometric jitter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from models.runtime.transforms import DEFAULT_IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, to_rgb


@dataclass(frozen=True)
class AugmentationConfig:
    """Strength of the training augmentation.

    No horizontal flip by default: parts are pooled along the width, so mirroring a block swaps its parts.
    """

    crop_scale: tuple[float, float] = (0.80, 1.0)
    crop_ratio_jitter: float = 0.12
    rotation_degrees: float = 5.0
    perspective_distortion: float = 0.12
    perspective_probability: float = 0.3
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.2
    hue: float = 0.03
    blur_probability: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.2)
    erasing_probability: float = 0.3
    horizontal_flip_probability: float = 0.0


def training_transform(
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augmentation: AugmentationConfig | None = None,
) -> v2.Compose:
    """Inference preprocessing plus geometric and photometric augmentation for training."""
    config = augmentation or AugmentationConfig()
    height, width = image_size
    aspect = width / height
    steps: list[v2.Transform] = [
        v2.Lambda(to_rgb),
        v2.ToImage(),
        v2.RandomResizedCrop(
            image_size,
            scale=config.crop_scale,
            ratio=(aspect * (1 - config.crop_ratio_jitter), aspect * (1 + config.crop_ratio_jitter)),
            antialias=True,
        ),
    ]
    if config.horizontal_flip_probability > 0:
        steps.append(v2.RandomHorizontalFlip(p=config.horizontal_flip_probability))
    if config.rotation_degrees > 0:
        steps.append(v2.RandomRotation(config.rotation_degrees))
    if config.perspective_probability > 0:
        steps.append(
            v2.RandomPerspective(
                distortion_scale=config.perspective_distortion, p=config.perspective_probability
            )
        )
    steps.append(
        v2.ColorJitter(
            brightness=config.brightness,
            contrast=config.contrast,
            saturation=config.saturation,
            hue=config.hue,
        )
    )
    if config.blur_probability > 0:
        steps.append(
            v2.RandomApply(
                [v2.GaussianBlur(kernel_size=5, sigma=config.blur_sigma)], p=config.blur_probability
            )
        )
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]
    if config.erasing_probability > 0:
        steps.append(v2.RandomErasing(p=config.erasing_probability, scale=(0.02, 0.15), value=0))
    return v2.Compose(steps)
