"""Embedder: checkpoint to fingerprints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.runtime.checkpoint import CheckpointError, CheckpointMetadata, save_checkpoint
from models.runtime.inference import Embedder
from models.runtime.pcb import build_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, num_parts=4, part_dim=8)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(
        model, path, metadata=CheckpointMetadata.for_model(model, image_height=32, image_width=48)
    )
    return path


def _images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + i, 70, 3), dtype=np.uint8)) for i in range(count)]


def test_embed_returns_unit_rows_of_embedding_dim(checkpoint: Path) -> None:
    embedder = Embedder.load(checkpoint)
    assert embedder.embedding_dim == 32
    assert embedder.image_size == (32, 48)
    assert embedder.model_id.startswith("resnet18-p4x8-")
    fingerprints = embedder.embed(_images(5), batch_size=2)
    assert fingerprints.shape == (5, 32) and fingerprints.dtype == np.float32
    assert np.allclose(np.linalg.norm(fingerprints, axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_fingerprints(checkpoint: Path) -> None:
    embedder = Embedder.load(checkpoint)
    images = _images(4)
    assert np.allclose(embedder.embed(images, batch_size=1), embedder.embed(images, batch_size=4), atol=1e-4)


def test_preprocess_and_embed_tensors_match_embed(checkpoint: Path) -> None:
    embedder = Embedder.load(checkpoint)
    images = _images(3)
    batch = embedder.preprocess(images)
    assert batch.shape == (3, 3, 32, 48)
    assert np.allclose(embedder.embed_tensors(batch).numpy(), embedder.embed(images), atol=1e-5)


def test_same_image_gives_same_fingerprint_and_grayscale_is_accepted(checkpoint: Path) -> None:
    embedder = Embedder.load(checkpoint)
    image = _images(1)[0]
    first, second = embedder.embed([image, image.copy()])
    assert np.allclose(first, second, atol=1e-6)
    assert embedder.embed([image.convert("L")]).shape == (1, 32)


def test_empty_input_gives_empty_array(checkpoint: Path) -> None:
    assert Embedder.load(checkpoint).embed([]).shape == (0, 32)


def test_missing_checkpoint_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="palletreid train"):
        Embedder.load(tmp_path / "missing.safetensors")
