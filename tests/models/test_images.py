"""The one image loader: what the service, the training data readers and the evaluation all decode through."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.runtime.images import (
    ImageTooLargeError,
    UndecodableImageError,
    UnsupportedImageFormatError,
    decode_image,
    load_image_file,
    read_limited,
)
from models.training.data import BlockImageDataset, read_dataset


def _portrait_jpeg_stored_sideways() -> bytes:
    """A 40x20 (w x h) JPEG whose EXIF says: rotate 90 degrees clockwise to view (orientation 6)."""
    image = Image.fromarray(np.full((20, 40, 3), 128, dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_orientation_is_applied_and_mode_is_rgb(tmp_path: Path) -> None:
    path = tmp_path / "block.jpg"
    path.write_bytes(_portrait_jpeg_stored_sideways())
    image = load_image_file(path)
    assert (image.size, image.mode) == ((20, 40), "RGB")
    assert decode_image(path.read_bytes(), name="upload").size == image.size
    grey = tmp_path / "grey.png"
    Image.new("L", (8, 6), 99).save(grey)
    assert load_image_file(grey).mode == "RGB"


def test_refusals_say_why(tmp_path: Path) -> None:
    bmp = tmp_path / "block.bmp"
    Image.new("RGB", (8, 6)).save(bmp)
    with pytest.raises(UnsupportedImageFormatError, match="not a JPEG, PNG or WebP"):
        load_image_file(bmp)
    with pytest.raises(ImageTooLargeError, match="larger than 10 bytes"):
        read_limited(io.BytesIO(b"x" * 11), max_bytes=10, name="upload")
    png = io.BytesIO()
    Image.new("RGB", (100, 100)).save(png, format="PNG")
    with pytest.raises(ImageTooLargeError, match="exceeds 9999 pixels"):
        decode_image(png.getvalue(), max_pixels=9999, name="upload")
    with pytest.raises(UndecodableImageError):
        decode_image(png.getvalue()[:60], name="truncated")


def test_training_data_is_decoded_by_the_same_loader(tmp_path: Path) -> None:
    folder = tmp_path / "pallet1"
    folder.mkdir()
    (folder / "cam_0_1.jpg").write_bytes(_portrait_jpeg_stored_sideways())
    Image.new("RGB", (8, 6)).save(folder / "cam_1_1.bmp")  # not a format the service accepts: not listed
    captures = read_dataset(tmp_path)
    assert [c.path.name for c in captures] == ["cam_0_1.jpg"]
    dataset = BlockImageDataset(captures, transform=lambda image: torch.tensor(image.size))
    size, _label, _camera = dataset[0]
    assert tuple(size.tolist()) == (20, 40)
