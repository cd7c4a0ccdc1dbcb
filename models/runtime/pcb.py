"""PCB (Part-based Convolutional Baseline) network for pallet-block fingerprints.

A convolutional trunk (a torchvision ResNet or MobileNetV2, or EfficientNet-Lite0; by default with the stride
of its last strided stage set to 1, so the final feature map keeps more spatial detail) produces a feature map
that is average-pooled into ``num_parts`` stripes along the width (or height). Each stripe is
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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torchvision import models as tv_models

from models.runtime.efficientnet_lite import EfficientNetLite0

logger = logging.getLogger(__name__)

PartAxis = Literal["width", "height"]

DEFAULT_ARCH = "resnet18"
DEFAULT_NUM_PARTS = 4
DEFAULT_PART_DIM = 128
DEFAULT_PART_AXIS: PartAxis = "width"
DEFAULT_LAST_STRIDE = 1


@dataclass(frozen=True)
class Backbone:
    """How to build one trunk architecture and read an ImageNet state dict of it."""

    build: Callable[[], nn.Module]
    """The full classification network, randomly initialised."""
    trunk: Callable[[nn.Module, int], nn.Module]
    """(full network, last stride) -> module mapping images to the final feature map."""
    channels: int
    head_prefix: str
    """State-dict prefix of the classification head, which the PCB does not use."""
    source: str
    """What a ``weights`` file must be (for error messages)."""


def _resnet_trunk(network: nn.Module, last_stride: int) -> nn.Module:
    """ResNet up to ``layer4``, whose first block gets ``last_stride`` (strided conv and shortcut)."""
    resnet = cast(tv_models.ResNet, network)
    first_block = resnet.layer4[0]
    strided_conv = (
        first_block.conv2 if isinstance(first_block, tv_models.resnet.Bottleneck) else first_block.conv1
    )
    strided_conv.stride = (last_stride, last_stride)
    if first_block.downsample is not None:
        first_block.downsample[0].stride = (last_stride, last_stride)
    return nn.Sequential(
        resnet.conv1,
        resnet.bn1,
        resnet.relu,
        resnet.maxpool,
        resnet.layer1,
        resnet.layer2,
        resnet.layer3,
        resnet.layer4,
    )


def _mobilenet_v2_trunk(network: nn.Module, last_stride: int) -> nn.Module:
    """MobileNetV2 ``features`` (up to the 1280-channel 1x1 conv); its last strided inverted residual (the
    first 160-channel block, output stride 32 -> 16) gets ``last_stride`` in its depthwise conv."""
    features = cast(tv_models.MobileNetV2, network).features
    strided_blocks = [
        block
        for block in features
        if isinstance(block, tv_models.mobilenetv2.InvertedResidual) and block.stride == 2
    ]
    last_block = strided_blocks[-1]
    for module in last_block.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (last_stride, last_stride)
    last_block.stride = last_stride
    return features


def _efficientnet_lite0_trunk(network: nn.Module, last_stride: int) -> nn.Module:
    """EfficientNet-Lite0 without its classifier; the last strided block (stage 6) gets ``last_stride``."""
    trunk = cast(EfficientNetLite0, network)
    trunk.remove_classifier()
    trunk.set_last_stride(last_stride)
    return trunk


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone(
        lambda: tv_models.resnet18(weights=None), _resnet_trunk, 512, "fc.", "torchvision resnet18"
    ),
    "resnet34": Backbone(
        lambda: tv_models.resnet34(weights=None), _resnet_trunk, 512, "fc.", "torchvision resnet34"
    ),
    "resnet50": Backbone(
        lambda: tv_models.resnet50(weights=None), _resnet_trunk, 2048, "fc.", "torchvision resnet50"
    ),
    "mobilenet_v2": Backbone(
        lambda: tv_models.mobilenet_v2(weights=None),
        _mobilenet_v2_trunk,
        1280,
        "classifier.",
        "torchvision mobilenet_v2",
    ),
    "efficientnet_lite0": Backbone(
        EfficientNetLite0,
        _efficientnet_lite0_trunk,
        1280,
        "_fc.",
        "EfficientNet-Lite0 (efficientnet_pytorch layout)",
    ),
}
"""Supported trunk architectures by name (the checkpoint's ``arch``)."""


def load_backbone_weights(network: nn.Module, weights: Path, arch: str) -> None:
    """Load an ImageNet (or any) state dict of ``arch`` into ``network``; every trunk key must match.

    Only the classification head may be missing or different: the PCB replaces it.
    """
    backbone = BACKBONES[arch]
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{weights} does not hold a state dict")
    trunk_state = {key: value for key, value in state.items() if not key.startswith(backbone.head_prefix)}
    try:
        missing, unexpected = network.load_state_dict(trunk_state, strict=False)
    except RuntimeError as error:  # same keys, other shapes
        raise ValueError(f"{weights} is not a {backbone.source} state dict: {error}") from error
    missing = [key for key in missing if not key.startswith(backbone.head_prefix)]
    if missing or unexpected:
        raise ValueError(
            f"{weights} is not a {backbone.source} state dict "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    logger.info("loaded %s backbone weights from %s", arch, weights)


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
    """Part-based Convolutional Baseline over a convolutional trunk (images -> feature map)."""

    def __init__(
        self,
        trunk: nn.Module,
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
        self.trunk = trunk
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
    """Build a PCB over the trunk architecture ``name`` (see ``BACKBONES``).

    ``weights`` is an optional state dict of the full classification network ``name`` (e.g. ImageNet weights
    from ``palletreid weights fetch``); its classification head is ignored.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(BACKBONES)}")
    if last_stride not in (1, 2):
        raise ValueError("last_stride must be 1 or 2")
    if part_axis not in ("width", "height"):
        raise ValueError(f"part_axis must be 'width' or 'height', not {part_axis!r}")
    backbone = BACKBONES[name]
    network = backbone.build()
    if weights is not None:
        load_backbone_weights(network, weights, name)
    return PCB(
        backbone.trunk(network, last_stride),
        arch=name,
        backbone_channels=backbone.channels,
        num_classes=num_classes,
        num_parts=num_parts,
        part_dim=part_dim,
        part_axis=cast(PartAxis, part_axis),
        last_stride=last_stride,
    )
