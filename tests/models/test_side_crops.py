"""Side-view block crops as training captures: the service's crop, the block captures' identities, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from models.runtime.detector import Detection, crop_blocks
from models.synth import SynthConfig, generate_dataset
from models.synth.sides import SideConfig, generate_sides
from models.training.data import read_dataset
from models.training.detector_annotations import read_annotations
from models.training.side_crops import SIDE_CAMERA, SideCropConfig, write_side_crops

SEED = 4


@pytest.fixture(scope="module")
def sides_and_blocks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("side_crops")
    generate_sides(
        root / "sides", SideConfig(pallets=2, seed=SEED, width=640, height=360, aged=True), progress=False
    )
    generate_dataset(
        root / "blocks", SynthConfig(pallets=2, seed=SEED, cameras=1, frames=1, aged=True), progress=False
    )
    return root / "sides", root / "blocks"


def test_crops_are_the_service_crops_of_the_block_captures_identities(
    sides_and_blocks: tuple[Path, Path], tmp_path: Path
) -> None:
    """Each crop is what the service cuts from the view for that face (up to JPEG loss) and carries the
    identity of a block of the capture dataset with the same seed and pallets (``test_sides`` checks that a
    face quad lies on the block of its identity)."""
    sides, blocks = sides_and_blocks
    metadata, count = write_side_crops(sides, tmp_path / "crops", progress=False)
    crops = {(crop.pallet, crop.position): crop for crop in read_dataset(metadata.parent)}
    views = read_annotations(sides)
    visible = [(view, block) for view in views for block in view.blocks if block.visible >= 0.5]
    assert count == len(crops) == len(visible) > 0
    assert {crop.camera for crop in crops.values()} == {SIDE_CAMERA}
    assert all(crop.attributes["aged"] == "1" for crop in crops.values())
    assert {crop.identity for crop in crops.values()} <= {
        capture.identity for capture in read_dataset(blocks)
    }
    for view, block in visible:
        (expected,) = crop_blocks(Image.open(view.path), [Detection(block.box, 1.0, block.quad)])
        written = Image.open(crops[(view.pallet_id, block.position)].path)
        assert written.size == expected.size == (280, 175)
        difference = np.abs(np.asarray(written, np.float64) - np.asarray(expected, np.float64)).mean()
        assert difference < 4.0


def test_blocks_seen_too_little_are_left_out(sides_and_blocks: tuple[Path, Path], tmp_path: Path) -> None:
    """A block mostly hidden (here: the first of each view marked 20 % visible) gives no crop."""
    sides, _blocks = sides_and_blocks
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "images").symlink_to(sides / "images")
    records = [json.loads(line) for line in (sides / "annotations.jsonl").read_text().splitlines()]
    for record in records:
        record["blocks"][0]["visible"] = 0.2
        del record["aged"]  # other sources may not say; their blocks count as new
    (hidden / "annotations.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    metadata, count = write_side_crops(hidden, tmp_path / "crops", progress=False)
    assert all(crop.attributes["aged"] == "0" for crop in read_dataset(metadata.parent))
    assert count == sum(len(record["blocks"]) - 1 for record in records)
    kept = {(crop.pallet, crop.position) for crop in read_dataset(metadata.parent)}
    assert not kept & {(record["pallet_id"], record["blocks"][0]["position"]) for record in records}
    _metadata, everything = write_side_crops(
        hidden, tmp_path / "all", SideCropConfig(min_visible=0.0), progress=False
    )
    assert everything == sum(len(record["blocks"]) for record in records)
    with pytest.raises(ValueError, match="min_visible"):
        SideCropConfig(min_visible=1.5)
    with pytest.raises(FileExistsError):
        write_side_crops(hidden, tmp_path / "crops", progress=False)


def test_side_crops_cli(
    sides_and_blocks: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sides, _blocks = sides_and_blocks
    with pytest.raises(SystemExit) as done:
        main(["side-crops", "--help"])
    assert done.value.code == 0
    assert "--extra-data" in capsys.readouterr().out
    out = tmp_path / "crops"
    assert main(["side-crops", str(sides), str(out), "--crop-width", "140", "--crop-height", "88"]) == 0
    assert Image.open(read_dataset(out)[0].path).size == (140, 88)
    assert main(["side-crops", str(sides), str(out)]) == 1  # exists
    assert main(["side-crops", str(tmp_path / "none"), str(tmp_path / "x")]) == 1  # no annotations
    assert main(["side-crops", str(sides), str(tmp_path / "y"), "--margin", "0.7"]) == 2
