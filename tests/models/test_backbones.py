"""PCB over the lightweight trunks: shapes, last stride, init files, checkpoints, learning-rate groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import models as tv_models

from models.cli.train import ARCHITECTURES
from models.runtime.checkpoint import CheckpointMetadata, load_checkpoint, save_checkpoint
from models.runtime.efficientnet_lite import EfficientNetLite0
from models.runtime.pcb import BACKBONES, build_model
from models.training.config import TrainConfig, TrainingError
from models.training.loop import build_optimizer

INPUT = (64, 96)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


def test_cli_choices_name_every_backbone() -> None:
    assert sorted(ARCHITECTURES) == sorted(BACKBONES)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "efficientnet_lite0"])
def test_last_stride_one_keeps_output_stride_16(arch: str) -> None:
    images = torch.randn(1, 3, *INPUT)
    with torch.no_grad():
        stride_one = build_model(arch, last_stride=1).eval().trunk(images)
        stride_two = build_model(arch, last_stride=2).eval().trunk(images)
    assert stride_one.shape == (1, 1280, INPUT[0] // 16, INPUT[1] // 16)
    assert stride_two.shape == (1, 1280, INPUT[0] // 32, INPUT[1] // 32)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "efficientnet_lite0"])
def test_fingerprint_and_training_outputs(arch: str) -> None:
    model = build_model(arch, num_classes=5, num_parts=4, part_dim=16)
    logits, features = model.train()(torch.randn(4, 3, *INPUT))
    assert len(logits) == 4 and logits[0].shape == (4, 5) and features.shape == (4, 4, 16)
    with torch.no_grad():
        fingerprints = model.eval()(torch.randn(2, 3, *INPUT))
    assert fingerprints.shape == (2, 64)
    assert torch.allclose(fingerprints.norm(dim=1), torch.ones(2), atol=1e-5)


def test_mobilenet_v2_loads_a_torchvision_state_dict_without_its_classifier(tmp_path: Path) -> None:
    reference = tv_models.mobilenet_v2(weights=None)
    weights = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), weights)
    model = build_model("mobilenet_v2", weights=weights)
    assert torch.equal(model.state_dict()["trunk.0.0.weight"], reference.features[0][0].weight)
    assert not any(key.startswith("classifier") or "trunk.classifier" in key for key in model.state_dict())
    torch.save(tv_models.resnet18(weights=None).state_dict(), weights)
    with pytest.raises(ValueError, match="not a torchvision mobilenet_v2 state dict"):
        build_model("mobilenet_v2", weights=weights)


def test_efficientnet_lite0_file_layout_loads_into_the_trunk(tmp_path: Path) -> None:
    reference = EfficientNetLite0()
    weights = tmp_path / "lite0.pth"
    torch.save(reference.state_dict(), weights)  # the layout of efficientnet-lite0-57934424.pth
    model = build_model("efficientnet_lite0", weights=weights)
    assert torch.equal(model.state_dict()["trunk._conv_head.weight"], reference._conv_head.weight)
    assert not any(key.startswith("trunk._fc") for key in model.state_dict())
    state = reference.state_dict()
    state["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)
    torch.save(state, weights)
    with pytest.raises(ValueError, match="not a EfficientNet-Lite0"):
        build_model("efficientnet_lite0", weights=weights)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "efficientnet_lite0"])
def test_checkpoint_records_the_arch_and_reloads_the_same_fingerprints(tmp_path: Path, arch: str) -> None:
    model = build_model(arch, num_classes=3, num_parts=4, part_dim=8)
    # BN statistics away from their init, as after training
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, *INPUT))
    model.eval()
    metadata = CheckpointMetadata.for_model(model, image_height=INPUT[0], image_width=INPUT[1])
    saved = save_checkpoint(model, tmp_path / "m.safetensors", metadata=metadata)
    loaded, loaded_metadata = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded_metadata.arch == arch and saved.model_id.startswith(f"{arch}-p4x8-")
    images = torch.randn(2, 3, *INPUT)
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images), atol=1e-5)


def test_backbone_learning_rate_multiplier_applies_to_the_trunk_only() -> None:
    model = build_model("mobilenet_v2", num_classes=3, num_parts=2, part_dim=8)
    config = TrainConfig(data_dir="unused", backbone_lr_multiplier=0.25, classifier_lr_multiplier=2.0)
    groups = {group["name"]: group for group in build_optimizer(model, config).param_groups}
    assert groups["backbone"]["lr_multiplier"] == groups["backbone_no_decay"]["lr_multiplier"] == 0.25
    assert groups["reductions"]["lr_multiplier"] == 1.0
    assert groups["classifiers"]["lr_multiplier"] == 2.0
    trunk_parameters = {id(p) for p in model.trunk.parameters()}
    grouped_trunk = {id(p) for name in ("backbone", "backbone_no_decay") for p in groups[name]["params"]}
    assert grouped_trunk == trunk_parameters
    assert sum(len(group["params"]) for group in groups.values()) == len(list(model.parameters()))


def test_pretrained_weights_and_init_checkpoint_are_exclusive() -> None:
    for starts in (
        {"weights": "w.pth", "pretrained": True},
        {"weights": "w.pth", "init_checkpoint": "model.safetensors"},
        {"pretrained": True, "init_checkpoint": "model.safetensors"},
    ):
        with pytest.raises(TrainingError, match="at most one"):
            TrainConfig(data_dir="d", **starts).validate()


def test_pretrained_resolves_the_cached_verified_file_of_the_arch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from models.training import pretrained
    from models.training.loop import _initial_weights

    cached = tmp_path / "tiny-mobilenet.pth"
    torch.save(tv_models.mobilenet_v2(weights=None).state_dict(), cached)
    source = replace(
        pretrained.PRETRAINED_SOURCES["mobilenet_v2"],
        member="pkg/tiny-mobilenet.pth",
        sha256=pretrained.file_sha256(cached),
    )
    monkeypatch.setitem(pretrained.PRETRAINED_SOURCES, "mobilenet_v2", source)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path))
    config = TrainConfig(data_dir="d", arch="mobilenet_v2", pretrained=True)
    assert _initial_weights(config) == cached
    build_model("mobilenet_v2", weights=cached)
    assert _initial_weights(TrainConfig(data_dir="d", weights="own.pth")) == Path("own.pth")
    assert _initial_weights(TrainConfig(data_dir="d")) is None
    with pytest.raises(TrainingError, match="pretrained=true: no known ImageNet init file for 'resnet18'"):
        _initial_weights(TrainConfig(data_dir="d", arch="resnet18", pretrained=True))
