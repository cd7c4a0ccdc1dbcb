"""``palletreid evaluate --reference``: captures of one block pairwise, and against other pallets' blocks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from models.runtime.voting import GeometryParameters


def _capture(texture: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(np.clip(texture + rng.normal(0, 6, texture.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder of four captures of one block (two cameras, two frames) and a dataset of two other pallets."""
    rng = np.random.default_rng(11)
    reference = tmp_path_factory.mktemp("reference")
    block = rng.integers(0, 255, (50, 80, 3)).astype(np.float64)
    for camera, frame in ((1, 7), (1, 9), (2, 8), (2, 10)):
        _capture(block, rng).save(reference / f"block_cam_{camera}_{frame}.jpg", quality=95)
    (reference / "notes.txt").write_text("not an image")

    dataset = tmp_path_factory.mktemp("impostors")
    rows = []
    for pallet in ("Q1", "Q2"):
        for position in range(6):
            texture = rng.integers(0, 255, (50, 80, 3)).astype(np.float64)
            for camera in (1, 2):
                relative = f"images/{pallet}/b{position}_cam_{camera}.png"
                (dataset / relative).parent.mkdir(parents=True, exist_ok=True)
                _capture(texture, rng).save(dataset / relative)
                rows.append([pallet, relative, f"cam_{camera}", "0", position])
    with (dataset / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["pallet_id", "path", "camera", "frame", "block"])
        writer.writerows(rows)
    return reference, dataset


def test_reference_pairs_and_impostors(
    tiny_checkpoint: Path, captures: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference, dataset = captures
    arguments = ["evaluate", "--reference", str(reference), "--impostors", str(dataset)]
    arguments += ["--impostor-pallets", "1", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path)]

    assert main(arguments) == 0

    report = json.loads((tmp_path / "reference.json").read_text())
    assert report["images"] == [
        "block_cam_1_7.jpg",
        "block_cam_1_9.jpg",
        "block_cam_2_10.jpg",
        "block_cam_2_8.jpg",
    ]
    assert report["block_threshold"] is None  # the test model is not calibrated
    pairs = report["pairs"]
    assert len(pairs) == 6
    assert [pair["same_camera"] for pair in pairs] == [True, False, False, False, False, True]
    block_inliers = GeometryParameters().block_inliers
    assert all(pair["inliers"] >= block_inliers and 0.5 < pair["cosine"] <= 1.0 for pair in pairs)
    (impostors,) = report["impostors"]
    # The first pallet's six receipt blocks, each matched with the four captures.
    assert (impostors["pallets"], impostors["blocks"]) == (1, 6)
    assert impostors["inliers"]["n"] == 24
    assert impostors["inliers"]["max"] < block_inliers
    assert "vs 6 blocks of 1 other pallets" in capsys.readouterr().out


def test_reference_needs_two_captures(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    Image.new("RGB", (40, 30)).save(folder / "only.png")
    arguments = ["evaluate", "--reference", str(folder), "--checkpoint", str(tiny_checkpoint)]
    assert main([*arguments, "--out", str(tmp_path / "out")]) == 1


def test_evaluate_needs_data_or_reference(tmp_path: Path) -> None:
    assert main(["evaluate", "--out", str(tmp_path)]) == 2
