"""Synthetic capture generator: determinism, metadata, identity and ageing behaviour, CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from models.synth import (
    STYLES,
    CameraSetup,
    FrameConditions,
    SynthConfig,
    age_block,
    generate_dataset,
    parse_styles,
    render_block,
    render_capture,
    render_capture_array,
)
from models.synth.texture import derive_rng

SMALL = (96, 60)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_same_arguments_give_byte_identical_files_whatever_the_worker_count(tmp_path: Path) -> None:
    config = SynthConfig(pallets=2, cameras=1, frames=1, seed=3, width=SMALL[0], height=SMALL[1])
    generate_dataset(tmp_path / "a", config, progress=False)
    generate_dataset(tmp_path / "b", config, workers=2, progress=False)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 2 * 6 + 2  # images, metadata.csv, synth.json
    assert first == second


def test_metadata_lists_every_capture_with_its_attributes(tmp_path: Path) -> None:
    config = SynthConfig(
        pallets=2,
        first_pallet=40,
        cameras=2,
        frames=2,
        aged=True,
        styles=("flash",),
        width=SMALL[0],
        height=SMALL[1],
    )
    metadata = generate_dataset(tmp_path, config, progress=False)
    with metadata.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["pallet_id", "path", "camera", "frame", "block", "style", "aged", "material"]
    assert len(rows) == 2 * 6 * 2 * 4 == config.pallets * config.captures_per_pallet
    assert {row["pallet_id"] for row in rows} == {"P000040", "P000041"}
    assert {row["block"] for row in rows} == {str(position) for position in range(6)}
    assert {row["camera"] for row in rows} == {"cam_1", "cam_2"}
    assert {row["style"] for row in rows} == {"flash"}
    assert {row["material"] for row in rows} <= {"chipwood", "solid"}
    assert len({row["path"] for row in rows}) == len(rows)
    aged = [row for row in rows if row["aged"] == "1"]
    assert len(aged) == len(rows) // 2
    assert {row["frame"] for row in aged} == {"002", "003"}
    with Image.open(tmp_path / rows[0]["path"]) as image:
        assert image.format == "JPEG"
        assert image.size == SMALL
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path, config, progress=False)


def test_textures_depend_on_seed_pallet_and_position_only() -> None:
    base = render_block(0, 7, 2, SMALL).reflectance
    assert np.array_equal(base, render_block(0, 7, 2, SMALL).reflectance)
    for other in (render_block(1, 7, 2, SMALL), render_block(0, 8, 2, SMALL), render_block(0, 7, 3, SMALL)):
        assert other.reflectance.shape == base.shape
        assert _correlation(base, other.reflectance) < 0.9


def test_aged_block_keeps_its_identity_under_the_same_capture_conditions() -> None:
    new = render_block(0, 5, 1, SMALL)
    aged = age_block(new, 0, 5, 1)
    assert np.array_equal(aged.reflectance, age_block(new, 0, 5, 1).reflectance)
    assert not np.array_equal(aged.reflectance, new.reflectance)
    style = STYLES["warehouse"]
    camera = CameraSetup.sample(style, derive_rng(0, 99))
    frame = FrameConditions.sample(style, derive_rng(0, 100))
    new_capture = render_capture_array(new, camera, frame, SMALL)
    aged_capture = render_capture_array(aged, camera, frame, SMALL)
    others = [render_capture_array(render_block(0, 6, p, SMALL), camera, frame, SMALL) for p in range(3)]
    same_block = _correlation(new_capture, aged_capture)
    assert same_block > max(_correlation(new_capture, other) for other in others)
    assert same_block > 0.5


def test_render_capture_returns_a_decoded_capture_of_the_requested_size() -> None:
    style = STYLES["conveyor"]
    image = render_capture(
        render_block(2, 0, 0, SMALL),
        CameraSetup.sample(style, derive_rng(1, 1)),
        FrameConditions.sample(style, derive_rng(1, 2)),
        SMALL,
    )
    assert image.mode == "RGB"
    assert image.size == SMALL
    pixels = np.asarray(image)
    assert 5 < pixels.mean() < 250
    assert pixels.std() > 2


def test_styles_are_validated() -> None:
    assert parse_styles(None) == tuple(STYLES)
    assert parse_styles("flash, daylight,flash") == ("flash", "daylight")
    with pytest.raises(ValueError, match="unknown style"):
        parse_styles("flash,studio")
    with pytest.raises(ValueError, match="unknown style"):
        SynthConfig(pallets=1, styles=("studio",))
    with pytest.raises(ValueError, match="at least 1"):
        SynthConfig(pallets=0)


def test_cli_writes_a_dataset_and_rejects_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "synth"
    argv = ["synth", str(out), "--pallets", "1", "--cameras", "1", "--frames", "1"]
    assert main([*argv, "--width", "64", "--height", "40", "--styles", "daylight", "--seed", "4"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "metadata.csv")
    assert len(list((out / "images").rglob("*.jpg"))) == 6
    assert main([*argv, "--styles", "studio"]) == 2
    assert main(argv) == 1  # refuses to overwrite


def test_preview_contact_sheet_shows_identities_by_captures(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    preview = tmp_path / "sheet" / "preview.png"
    argv = [
        "synth",
        str(out),
        "--pallets",
        "1",
        "--cameras",
        "1",
        "--frames",
        "3",
        "--width",
        "64",
        "--height",
        "40",
    ]
    assert main([*argv, "--preview", str(preview)]) == 0
    with Image.open(preview) as sheet:  # six block identities, three captures each
        assert sheet.size == (3 * 64 + 2 * 4, 6 * 40 + 5 * 4)
