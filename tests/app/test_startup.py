"""The service refuses to start with a model it cannot use, and says what to do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.db.tables import EMBEDDING_DIM
from app.errors import ConfigurationError
from app.main import create_app
from app.settings import Settings
from models.runtime.checkpoint import CheckpointMetadata, save_checkpoint
from models.runtime.pcb import build_model


def _start(settings: Settings) -> None:
    with TestClient(create_app(settings)):
        pass


def test_missing_model_file_refuses_to_start(
    database_url: str, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    with pytest.raises(ConfigurationError, match="PALLETREID_MODEL_PATH") as refused:
        _start(make_settings(database_url, tmp_path / "missing.safetensors"))
    assert "does not exist" in str(refused.value)


def test_corrupt_model_file_refuses_to_start(
    database_url: str, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    path = tmp_path / "lfs-pointer.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ConfigurationError, match="PALLETREID_MODEL_PATH"):
        _start(make_settings(database_url, path))


def test_model_with_the_wrong_embedding_size_refuses_to_start(
    database_url: str, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    torch.manual_seed(0)
    model = build_model(
        "resnet18", num_classes=0, num_parts=4, part_dim=64, part_axis="width", last_stride=1, weights=None
    )
    path = tmp_path / "small.safetensors"
    save_checkpoint(
        model, path, metadata=CheckpointMetadata.for_model(model, image_height=32, image_width=64)
    )
    with pytest.raises(
        ConfigurationError, match=f"256-dim fingerprints but the database stores {EMBEDDING_DIM}"
    ):
        _start(make_settings(database_url, path))
