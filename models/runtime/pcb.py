"""PCB (Part-based Convolutional Baseline) network for pallet-block fingerprints.

A ResNet backbone (last stride 1 by default, so the final feature map keeps more spatial detail) produces a
feature map that is average-pooled into ``num_parts`` stripes along the width (or height). Each stripe is
reduced by its own 1x1 conv + BN + ReLU to ``part_dim`` channels. During training every part has its own
identity classifier; at inference the parts are L2-normalised, joined and scaled by ``1/sqrt(num_parts)`` so
the fingerprint has unit norm and the cosine similarity of two fingerprints is the mean of their part cosines.
Each image is standardised per channel first (``standardize_images``), so camera exposure and colour balance
do not have to be learnt away.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torchvision import models as tv_models

logger = logging.getLogger(__name__)

PartAxis = Literal["width", "height"]

BACKBONES: dict[str, Callable[..., tv_models.ResNet]] = {
    "resnet18": tv_models.resnet18,
    "resnet34": tv_models.resnet34,
    "resnet50": tv_models.resnet50,
}
"""Supported architecture names (torchvision ResNets)."""

DEFAULT_ARCH = "resnet18"
DEFAULT_NUM_PARTS = 4
DEFAULT_PART_DIM = 128
DEFAULT_PART_AXIS: PartAxis = "width"
DEFAULT_LAST_STRIDE = 1


def _set_last_stride(resnet: tv_models.ResNet, stride: int) -> None:
    """Set the stride of the first block of ``layer4`` (both its strided conv and its shortcut)."""
    first_block = resnet.layer4[0]
    strided_conv = (
        first_block.conv2 if isinstance(first_block, tv_models.resnet.Bottleneck) else first_block.conv1
    )
    strided_conv.stride = (stride, stride)
    if first_block.downsample is not None:
        first_block.downsample[0].stride = (stride, stride)


def standardize_images(images: Tensor) -> Tensor:
    """Per-image, per-channel zero mean and unit variance.

    Removes exposure, contrast and white balance, which vary between camera stations and say nothing about
    the block, before the network sees the image: the wood's texture and marks are what is left.
    """
    mean = images.mean(dim=(2, 3), keepdim=True)
    std = images.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    return (images - mean) / std


def parts_to_fingerprint(part_features: Tensor) -> Tensor:
    """(batch, parts, dim) part features -> (batch, parts * dim) unit-norm fingerprint."""
    num_parts = part_features.shape[1]
    normalised = F.normalize(part_features, dim=2)
    return normalised.flatten(1) / math.sqrt(num_parts)


class PCB(nn.Module):
    """Part-based Convolutional Baseline over a ResNet trunk."""

    def __init__(
        self,
        backbone: tv_models.ResNet,
        *,
        arch: str,
        backbone_channels: int,
        num_classes: int,
        num_parts: int,
        part_dim: int,
        part_axis: PartAxis,
        last_stride: int,
    ) -> None:
        super().__init__()
        if num_parts < 1 or part_dim < 1:
            raise ValueError("num_parts and part_dim must be positive")
        if part_axis not in ("width", "height"):
            raise ValueError(f"part_axis must be 'width' or 'height', not {part_axis!r}")
        if num_classes < 0:
            raise ValueError("num_classes must be >= 0 (0: inference model without classifiers)")
        self.arch = arch
        self.num_classes = num_classes
        self.num_parts = num_parts
        self.part_dim = part_dim
        self.part_axis: PartAxis = part_axis
        self.last_stride = last_stride
        self.trunk = nn.Sequential(
            backbone.conv1,
            backbone.bn1,
            backbone.relu,
            backbone.maxpool,
            backbone.layer1,
            backbone.layer2,
            backbone.layer3,
            backbone.layer4,
        )
        pooled_size = (1, num_parts) if part_axis == "width" else (num_parts, 1)
        self.part_pool = nn.AdaptiveAvgPool2d(pooled_size)
        reduction_convs = [
            nn.Conv2d(backbone_channels, part_dim, kernel_size=1, bias=False) for _ in range(num_parts)
        ]
        for conv in reduction_convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        self.reductions = nn.ModuleList(
            nn.Sequential(conv, nn.BatchNorm2d(part_dim), nn.ReLU(inplace=True)) for conv in reduction_convs
        )
        classifiers = [nn.Linear(part_dim, num_classes) for _ in range(num_parts if num_classes else 0)]
        for classifier in classifiers:
            nn.init.normal_(classifier.weight, std=0.001)
            nn.init.zeros_(classifier.bias)
        self.classifiers = nn.ModuleList(classifiers)

    @property
    def embedding_dim(self) -> int:
        return self.num_parts * self.part_dim

    def part_features(self, images: Tensor) -> Tensor:
        """(batch, 3, H, W) normalised images -> (batch, num_parts, part_dim) part features."""
        feature_map = self.part_pool(self.trunk(standardize_images(images)))
        stripes = feature_map.flatten(2)  # (batch, channels, num_parts) for either axis
        parts = [
            reduction(stripes[:, :, index, None, None]).flatten(1)
            for index, reduction in enumerate(self.reductions)
        ]
        return torch.stack(parts, dim=1)

    def fingerprint(self, images: Tensor) -> Tensor:
        """(batch, 3, H, W) normalised images -> (batch, embedding_dim) unit-norm fingerprints."""
        return parts_to_fingerprint(self.part_features(images))

    def classify(self, part_features: Tensor) -> list[Tensor]:
        """Per-part identity logits (training only)."""
        if not self.classifiers:
            raise RuntimeError(
                "this PCB has no classifiers (num_classes=0); build it with num_classes > 0 to train"
            )
        return [classifier(part_features[:, index]) for index, classifier in enumerate(self.classifiers)]

    def forward(self, images: Tensor) -> Tensor | tuple[list[Tensor], Tensor]:
        """Training mode: (per-part logits, part features). Eval mode: fingerprints."""
        if not self.training:
            return self.fingerprint(images)
        features = self.part_features(images)
        return self.classify(features), features


def build_model(
    name: str = DEFAULT_ARCH,
    *,
    num_classes: int = 0,
    num_parts: int = DEFAULT_NUM_PARTS,
    part_dim: int = DEFAULT_PART_DIM,
    part_axis: str = DEFAULT_PART_AXIS,
    last_stride: int = DEFAULT_LAST_STRIDE,
    weights: Path | None = None,
) -> PCB:
    """Build a PCB over the torchvision ResNet ``name``.

    ``weights`` is an optional path to a torchvision ResNet state dict (e.g. ImageNet weights downloaded
    separately); the classification head of that state dict is ignored.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(BACKBONES)}")
    if last_stride not in (1, 2):
        raise ValueError("last_stride must be 1 or 2")
    if part_axis not in ("width", "height"):
        raise ValueError(f"part_axis must be 'width' or 'height', not {part_axis!r}")
    backbone = BACKBONES[name](weights=None)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        trunk_state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        missing, unexpected = backbone.load_state_dict(trunk_state, strict=False)
        missing = [key for key in missing if not key.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"{weights} is not a torchvision {name} state dict "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        logger.info("loaded backbone weights from %s", weights)
    _set_last_stride(backbone, last_stride)
    backbone_channels = backbone.fc.in_features
    return PCB(
        backbone,
        arch=name,
        backbone_channels=backbone_channels,
        num_classes=num_classes,
        num_parts=num_parts,
        part_dim=part_dim,
        part_axis=cast(PartAxis, part_axis),
        last_stride=last_stride,
    )
