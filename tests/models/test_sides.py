"""Synthetic side views: determinism, truth that lies on the blocks, shared identities, dataset files, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from models.runtime.detector import Detection, crop_blocks
from models.synth import BlockKey, get_family
from models.synth.sides import (
    BACKGROUNDS,
    HELD_OUT_BACKGROUND,
    TRAINING_BACKGROUNDS,
    SideConfig,
    generate_sides,
    render_side,
)
from models.synth.sides.pallet import block_face
from models.training.detector_annotations import AnnotationError, read_annotations

SIZE = (480, 270)


def _grey(pixels: np.ndarray, size: tuple[int, int] = (48, 30)) -> np.ndarray:
    image = (
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
        if pixels.dtype != np.uint8
        else Image.fromarray(pixels)
    )
    grey = np.asarray(image.convert("L").resize(size, Image.Resampling.BILINEAR), np.float64)
    return (grey - grey.mean()) / (grey.std() + 1e-9)


def test_renders_are_deterministic_and_differ_between_sides_and_pallets() -> None:
    first = render_side(3, 11, 0, "chipsplat", "floor", (320, 180))
    assert render_side(3, 11, 0, "chipsplat", "floor", (320, 180)) == first
    assert render_side(3, 11, 1, "chipsplat", "floor", (320, 180)).jpeg != first.jpeg
    assert render_side(3, 12, 0, "chipsplat", "floor", (320, 180)).jpeg != first.jpeg
    assert first.image().size == (320, 180)


@pytest.mark.parametrize(("family", "station"), [("chipsplat", 0), ("flakepress", 0), ("flakepress", 1)])
def test_boxes_lie_on_the_blocks_of_the_same_identities_left_to_right(family: str, station: int) -> None:
    """Each truth quad, rectified, looks like its own block face (from the family generator) more than like
    the other two blocks of the side, at every station; boxes are inside the image and ordered left to
    right."""
    generator = get_family(family)
    checked = 0
    for pallet in range(4):
        side = pallet % 2
        background = TRAINING_BACKGROUNDS[pallet % 3]
        view = render_side(0, pallet, side, family, background, SIZE, station=station)
        assert [block.position for block in view.blocks] == [side * 3, side * 3 + 1, side * 3 + 2]
        assert [block.identity for block in view.blocks] == [
            f"{generator.pallet_id(pallet)}/{side * 3 + index}" for index in range(3)
        ]
        centres = [(block.box[0] + block.box[2]) / 2 for block in view.blocks]
        assert centres == sorted(centres)
        for block in view.blocks:
            x0, y0, x1, y1 = block.box
            assert 0 <= x0 < x1 <= SIZE[0] and 0 <= y0 < y1 <= SIZE[1]
            assert x1 - x0 > 20
        detections = [Detection(block.box, 1.0, block.quad) for block in view.blocks]
        crops = [_grey(np.asarray(crop)) for crop in crop_blocks(view.image(), detections)]
        faces = [
            _grey(block_face(generator.new_block(BlockKey(0, pallet, block.position), (280, 175))))
            for block in view.blocks
        ]
        similarity = np.array([[float((crop * face).mean()) for face in faces] for crop in crops])
        for index, block in enumerate(view.blocks):
            if block.visible == 1.0:  # straps and forks may hide what makes a block itself
                assert similarity[index].argmax() == index, similarity
                checked += 1
    assert checked >= 6


def test_another_station_shows_the_same_blocks_in_a_scene_of_its_own() -> None:
    receipt = render_side(2, 7, 1, "flakepress", "racks", SIZE)
    assert render_side(2, 7, 1, "flakepress", "racks", SIZE, station=0) == receipt
    dispatch = render_side(2, 7, 1, "flakepress", "racks", SIZE, station=1)
    assert [block.identity for block in dispatch.blocks] == [block.identity for block in receipt.blocks]
    assert dispatch.jpeg != receipt.jpeg
    assert [block.box for block in dispatch.blocks] != [block.box for block in receipt.blocks]
    assert render_side(2, 7, 1, "flakepress", "racks", SIZE, station=2).jpeg != dispatch.jpeg
    with pytest.raises(ValueError, match="station"):
        render_side(2, 7, 1, "flakepress", "racks", SIZE, station=-1)


def test_aged_views_show_the_aged_blocks() -> None:
    new = render_side(0, 5, 0, "chipsplat", "yard", (320, 180))
    aged = render_side(0, 5, 0, "chipsplat", "yard", (320, 180), aged=True)
    assert new.jpeg != aged.jpeg and aged.aged
    assert [block.box for block in new.blocks] == [block.box for block in aged.blocks]


def test_dataset_files_and_held_out_background(tmp_path: Path) -> None:
    assert HELD_OUT_BACKGROUND in BACKGROUNDS and HELD_OUT_BACKGROUND not in TRAINING_BACKGROUNDS
    config = SideConfig(pallets=1, width=192, height=108, families=("chipsplat", "flakepress"))
    annotations = generate_sides(tmp_path / "a", config, progress=False)
    views = read_annotations(tmp_path / "a")
    assert len(views) == config.total_images == 4
    assert {view.background for view in views} <= set(TRAINING_BACKGROUNDS)
    for view in views:
        assert view.path.is_file() and len(view.blocks) == 3
        assert Image.open(view.path).size == (192, 108)
    settings = json.loads((tmp_path / "a" / "sides.json").read_text())
    assert settings["backgrounds"] == list(TRAINING_BACKGROUNDS)
    generate_sides(tmp_path / "b", config, progress=False)
    assert annotations.read_bytes() == (tmp_path / "b" / "annotations.jsonl").read_bytes()
    with pytest.raises(FileExistsError):
        generate_sides(tmp_path / "a", config, progress=False)
    with pytest.raises(AnnotationError, match="does not exist"):
        read_annotations(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "annotations.jsonl").write_text('{"path": "x.jpg"}\n')
    with pytest.raises(AnnotationError, match=r"bad/annotations\.jsonl:1"):
        read_annotations(tmp_path / "bad")
    with pytest.raises(ValueError, match="backgrounds"):
        SideConfig(pallets=1, backgrounds=("moon",))


def test_synth_sides_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["synth-sides", "--help"])
    assert done.value.code == 0
    assert "annotations.jsonl" in capsys.readouterr().out
    out = tmp_path / "sides"
    small = ["--pallets", "1", "--sides", "1", "--width", "192", "--height", "108"]
    assert main(["synth-sides", str(out), *small, "--backgrounds", HELD_OUT_BACKGROUND]) == 0
    (view,) = read_annotations(out)
    assert view.background == HELD_OUT_BACKGROUND
    assert main(["synth-sides", str(out), "--pallets", "1"]) == 1  # exists
    assert main(["synth-sides", str(tmp_path / "x"), "--pallets", "1", "--backgrounds", "moon"]) == 2
    dispatch_station = [str(tmp_path / "dispatch"), *small, "--backgrounds", HELD_OUT_BACKGROUND]
    assert main(["synth-sides", *dispatch_station, "--station", "1"]) == 0
    assert json.loads((tmp_path / "dispatch" / "sides.json").read_text())["station"] == 1
    (dispatch,) = read_annotations(tmp_path / "dispatch")
    assert dispatch.path.read_bytes() != view.path.read_bytes()
    assert main(["synth-sides", str(tmp_path / "y"), "--pallets", "1", "--station", "-1"]) == 2
