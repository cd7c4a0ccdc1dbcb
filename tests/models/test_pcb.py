"""PCB network, preprocessing and checkpoint round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision import models as tv_models

from models.runtime.checkpoint import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    CheckpointMetadata,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from models.runtime.pcb import build_model
from models.runtime.transforms import DEFAULT_IMAGE_SIZE, inference_transform
from models.training.augmentation import training_transform

SMALL_INPUT = (32, 48)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


def test_eval_forward_gives_unit_norm_fingerprint_of_parts_times_dim() -> None:
    model = build_model("resnet18", num_classes=0, num_parts=4, part_dim=16).eval()
    fingerprints = model(torch.randn(3, 3, *SMALL_INPUT))
    assert fingerprints.shape == (3, 64)
    assert torch.allclose(fingerprints.norm(dim=1), torch.ones(3), atol=1e-5)


def test_fingerprint_cosine_is_mean_of_part_cosines() -> None:
    model = build_model("resnet18", num_parts=4, part_dim=16).eval()
    images = torch.randn(2, 3, *SMALL_INPUT)
    with torch.no_grad():
        parts = model.part_features(images)
        fingerprints = model.fingerprint(images)
    part_cosines = torch.nn.functional.cosine_similarity(parts[0], parts[1], dim=1)
    assert torch.allclose(fingerprints[0] @ fingerprints[1], part_cosines.mean(), atol=1e-5)


def test_train_forward_returns_per_part_logits_and_features() -> None:
    model = build_model("resnet18", num_classes=7, num_parts=3, part_dim=8, part_axis="height").train()
    logits, features = model(torch.randn(4, 3, *SMALL_INPUT))
    assert len(logits) == 3
    assert all(part.shape == (4, 7) for part in logits)
    assert features.shape == (4, 3, 8)


def test_last_stride_one_doubles_the_final_feature_map() -> None:
    images = torch.randn(1, 3, 64, 96)
    stride_one = build_model("resnet18", last_stride=1).trunk(images)
    stride_two = build_model("resnet18", last_stride=2).trunk(images)
    assert stride_one.shape[-2:] == (4, 6)
    assert stride_two.shape[-2:] == (2, 3)


def test_bottleneck_backbone_builds_with_last_stride_one() -> None:
    model = build_model("resnet50", num_parts=2, part_dim=8).eval()
    assert model.trunk(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 4, 4)


def test_weights_path_loads_torchvision_state_dict(tmp_path: Path) -> None:
    reference = tv_models.resnet18(weights=None)
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    model = build_model("resnet18", weights=weights)
    assert torch.equal(model.state_dict()["trunk.0.weight"], reference.conv1.weight)
    torch.save({"something": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match="not a torchvision"):
        build_model("resnet18", weights=weights)


def test_unknown_arch_and_axis_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="part_axis"):
        build_model("resnet18", part_axis="diagonal")


def test_transforms_produce_normalised_tensor_of_the_requested_size() -> None:
    image = Image.new("L", (300, 150), color=128)
    tensor = inference_transform(DEFAULT_IMAGE_SIZE)(image)
    assert tensor.shape == (3, *DEFAULT_IMAGE_SIZE)
    assert tensor.dtype == torch.float32
    assert torch.allclose(tensor[0], torch.full_like(tensor[0], (128 / 255 - 0.485) / 0.229), atol=1e-2)
    augmented = training_transform(SMALL_INPUT)(Image.new("RGB", (90, 60), color=(200, 120, 40)))
    assert augmented.shape == (3, *SMALL_INPUT)


def _save_small(path: Path, *, half: bool = False, seed: int = 0) -> CheckpointMetadata:
    torch.manual_seed(seed)
    model = build_model("resnet18", num_classes=5, num_parts=2, part_dim=8)
    metadata = CheckpointMetadata.for_model(
        model, image_height=SMALL_INPUT[0], image_width=SMALL_INPUT[1], training={"steps": 3}
    )
    return save_checkpoint(model, path, metadata=metadata, half=half)


def test_checkpoint_round_trip_preserves_fingerprints_and_metadata(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("resnet18", num_classes=5, num_parts=2, part_dim=8).eval()
    metadata = CheckpointMetadata.for_model(model, image_height=32, image_width=48, training={"steps": 3})
    saved = save_checkpoint(model, tmp_path / "m.safetensors", metadata=metadata)
    loaded, loaded_metadata = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded_metadata == saved
    assert saved.model_id.startswith("resnet18-p2x8-") and len(saved.model_id) == len("resnet18-p2x8-") + 12
    assert loaded_metadata.embedding_dim == 16 and loaded_metadata.image_size == (32, 48)
    assert loaded_metadata.training == {"steps": 3}
    assert len(loaded.classifiers) == 0
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images), atol=1e-5)


def test_model_id_is_stable_for_same_weights_and_differs_otherwise(tmp_path: Path) -> None:
    first = _save_small(tmp_path / "a.safetensors", seed=0)
    again = _save_small(tmp_path / "b.safetensors", seed=0)
    other = _save_small(tmp_path / "c.safetensors", seed=1)
    assert first.model_id == again.model_id != other.model_id


def test_half_precision_checkpoint_is_smaller_and_loads(tmp_path: Path) -> None:
    _save_small(tmp_path / "full.safetensors")
    _save_small(tmp_path / "half.safetensors", half=True)
    assert (tmp_path / "half.safetensors").stat().st_size < 0.6 * (
        tmp_path / "full.safetensors"
    ).stat().st_size
    full, _ = load_checkpoint(tmp_path / "full.safetensors")
    half, _ = load_checkpoint(tmp_path / "half.safetensors")
    assert next(half.parameters()).dtype == torch.float32
    images = torch.randn(2, 3, *SMALL_INPUT)
    with torch.no_grad():
        cosines = (full(images) * half(images)).sum(dim=1)
    assert torch.all(cosines > 0.999)


def test_missing_corrupt_and_foreign_checkpoints_raise_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a palletreid checkpoint"):
        read_metadata(foreign)


def test_checkpoint_whose_weights_disagree_with_metadata_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    metadata = _save_small(path)
    header = metadata.to_header()
    header["part_dim"] = "9"
    header["embedding_dim"] = "18"
    save_file(load_file(str(path)), str(path), metadata=header)
    with pytest.raises(CheckpointError, match="do not match its metadata"):
        load_checkpoint(path)


def test_default_checkpoint_lives_in_the_package() -> None:
    assert DEFAULT_CHECKPOINT.name == "pcb_resnet18.safetensors"
    assert DEFAULT_CHECKPOINT.parent.name == "checkpoints"
