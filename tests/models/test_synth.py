"""Synthetic capture families: determinism, metadata, identity, ageing, distractors, differences, CLI."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from models.synth import (
    FAMILIES,
    BlockKey,
    SynthConfig,
    family_styles,
    generate_dataset,
    get_family,
    iter_captures,
    parse_families,
    parse_styles,
    render_pallet,
)
from models.synth.families import chipsplat, flakepress
from models.synth.families.chipsplat import (
    STYLES,
    CameraSetup,
    FrameConditions,
    age_block,
    render_block,
    render_capture,
    render_capture_array,
)
from models.synth.families.flakepress import marks as flake_marks
from models.synth.families.flakepress.camera import STATIONS, Rig, Shot, capture, light_block
from models.synth.seeding import derive_rng
from models.training.data import read_dataset

SMALL = (96, 60)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _pixels(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        return np.asarray(image.convert("L"), dtype=np.float64)


# --- datasets of any family ---------------------------------------------------------------------------------


def test_same_arguments_give_byte_identical_files_whatever_the_worker_count(tmp_path: Path) -> None:
    config = SynthConfig(
        pallets=2, cameras=1, frames=1, seed=3, width=SMALL[0], height=SMALL[1], families=tuple(FAMILIES)
    )
    generate_dataset(tmp_path / "a", config, progress=False)
    generate_dataset(tmp_path / "b", config, workers=2, progress=False)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 2 * 2 * 6 + 2  # two families x two pallets x six blocks, metadata.csv, synth.json
    assert first == second


def test_metadata_lists_every_capture_with_its_attributes(tmp_path: Path) -> None:
    config = SynthConfig(
        pallets=2,
        first_pallet=40,
        cameras=2,
        frames=2,
        aged=True,
        styles=("flash", "tunnel"),
        width=SMALL[0],
        height=SMALL[1],
        families=("chipsplat", "flakepress"),
    )
    metadata = generate_dataset(tmp_path, config, progress=False)
    with metadata.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "pallet_id",
        "path",
        "camera",
        "frame",
        "block",
        "style",
        "aged",
        "material",
        "family",
    ]
    assert len(rows) == 2 * 2 * 6 * 2 * 4 == config.total_captures
    assert {row["pallet_id"] for row in rows} == {"P000040", "P000041", "F000040", "F000041"}
    assert {(row["family"], row["style"]) for row in rows} == {
        ("chipsplat", "flash"),
        ("flakepress", "tunnel"),
    }
    assert {row["material"] for row in rows} <= {"chipwood", "solid", "flakeboard"}
    assert {row["block"] for row in rows} == {str(position) for position in range(6)}
    assert {row["camera"] for row in rows} == {"cam_1", "cam_2"}
    assert len({row["path"] for row in rows}) == len(rows)
    aged = [row for row in rows if row["aged"] == "1"]
    assert len(aged) == len(rows) // 2
    assert {row["frame"] for row in aged} == {"002", "003"}
    with Image.open(tmp_path / rows[-1]["path"]) as image:
        assert image.format == "JPEG"
        assert image.size == SMALL
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path, config, progress=False)


def test_the_project_reader_reads_a_several_family_dataset(tmp_path: Path) -> None:
    config = SynthConfig(pallets=1, cameras=2, frames=1, width=48, height=30, families=tuple(FAMILIES))
    generate_dataset(tmp_path, config, progress=False)
    captures = read_dataset(tmp_path)
    assert len(captures) == 2 * 6 * 2
    assert {capture.identity for capture in captures} == {
        f"{prefix}000000/{position}" for prefix in "PF" for position in range(6)
    }
    assert {capture.attributes["family"] for capture in captures} == set(FAMILIES)


def test_a_familys_pallets_do_not_depend_on_the_other_families_in_the_dataset() -> None:
    alone = SynthConfig(pallets=1, cameras=1, frames=1, width=48, height=30, families=("flakepress",))
    together = dataclasses.replace(alone, families=("chipsplat", "flakepress"))
    assert [c.jpeg for c in render_pallet(alone, 0)] == [
        c.jpeg for c in render_pallet(together, 0, "flakepress")
    ]
    assert [c.pallet_id for c in iter_captures(together)][::6] == ["P000000", "F000000"]


def test_families_and_styles_are_validated() -> None:
    assert parse_families(None) == ("chipsplat",)
    assert parse_families("all") == tuple(FAMILIES)
    assert parse_families("flakepress, chipsplat,flakepress") == ("flakepress", "chipsplat")
    with pytest.raises(ValueError, match="unknown family"):
        parse_families("flakepress,marble")
    assert parse_styles(None) == ()
    assert parse_styles("flash, daylight,flash") == ("flash", "daylight")
    assert family_styles(("chipsplat",), ()) == {"chipsplat": tuple(STYLES)}
    assert family_styles(tuple(FAMILIES), ("cctv", "flash")) == {
        "chipsplat": ("flash",),
        "flakepress": ("cctv",),
    }
    with pytest.raises(ValueError, match="unknown style"):
        SynthConfig(pallets=1, styles=("studio",))
    with pytest.raises(ValueError, match="unknown style"):
        SynthConfig(pallets=1, styles=("cctv",))  # a station of a family the dataset does not draw
    with pytest.raises(ValueError, match="none of the styles"):
        SynthConfig(pallets=1, styles=("flash",), families=tuple(FAMILIES))
    with pytest.raises(ValueError, match="at least 1"):
        SynthConfig(pallets=0)
    with pytest.raises(ValueError, match="each once"):
        SynthConfig(pallets=1, families=("flakepress", "flakepress"))
    assert len({family.pallet_prefix for family in FAMILIES.values()}) == len(FAMILIES)
    assert not set(FAMILIES["chipsplat"].styles) & set(FAMILIES["flakepress"].styles)


# --- identity: a block is a function of (seed, pallet, position) and survives captures and ageing -----------


@pytest.mark.parametrize("name", list(FAMILIES))
def test_blocks_depend_on_seed_pallet_and_position_only(name: str) -> None:
    family = get_family(name)

    def pixels(seed: int, pallet: int, position: int) -> np.ndarray:
        block = family.new_block(BlockKey(seed, pallet, position), SMALL)
        camera = family.camera(0, 0, 0, tuple(family.styles)[:1])
        return _pixels(family.capture_frames(block, camera, BlockKey(0, 0, 0), 0, [0], SMALL)[0])

    base = pixels(0, 7, 2)
    assert np.array_equal(base, pixels(0, 7, 2))
    for other in (pixels(1, 7, 2), pixels(0, 8, 2), pixels(0, 7, 3)):
        assert _correlation(base, other) < 0.9


def test_chipsplat_aged_block_keeps_its_identity_under_the_same_capture_conditions() -> None:
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


def _still(shot: Shot) -> Shot:
    """The shot without detector jitter or motion: captures line up pixel for pixel."""
    return dataclasses.replace(shot, pad=(1.1, 1.1), jitter=(0.0, 0.0), motion=(0.0, 0.0))


def test_flakepress_identity_survives_exposure_noise_processing_and_ageing() -> None:
    family = FAMILIES["flakepress"]
    size = (140, 88)
    rig = Rig.sample(STATIONS["floodlight"], derive_rng(0, 1))
    shots = [_still(Shot.sample(rig.station, derive_rng(0, 2, frame))) for frame in range(2)]
    assert shots[0].noise_seed != shots[1].noise_seed and shots[0].exposure != shots[1].exposure

    def shoot(block: flakepress.PressedBlock, shot: Shot) -> np.ndarray:
        return _pixels(capture(light_block(block, rig), block, rig, shot, size))

    key = BlockKey(0, 11, 0)  # a corner block: EPAL oval
    new = family.new_block(key, size)
    aged = family.aged_block(new, key)
    assert np.array_equal(aged.albedo, family.aged_block(new, key).albedo)
    assert not np.array_equal(aged.albedo, new.albedo)
    others = [family.new_block(BlockKey(0, pallet, 3), size) for pallet in (12, 13, 14)]  # corner blocks too
    reference = shoot(new, shots[0])
    other_block = max(_correlation(reference, shoot(other, shots[1])) for other in others)
    assert _correlation(reference, shoot(new, shots[1])) > other_block + 0.1
    assert _correlation(reference, shoot(aged, shots[1])) > other_block


def test_the_same_block_object_is_captured_by_every_camera_of_a_pallet() -> None:
    config = SynthConfig(pallets=1, cameras=3, frames=1, width=48, height=30, families=("flakepress",))
    captures = render_pallet(config, 0)
    assert [c.camera for c in captures[:3]] == ["cam_1", "cam_2", "cam_3"]
    assert len({c.jpeg for c in captures}) == len(captures)  # every capture differs ...
    family = FAMILIES["flakepress"]
    block = family.new_block(BlockKey(0, 0, 0), config.size)
    cameras = [family.camera(0, 0, index, tuple(family.styles)) for index in range(3)]
    again = [
        family.capture_frames(block, cam, BlockKey(0, 0, 0), i, [0], config.size)[0]
        for i, cam in enumerate(cameras)
    ]
    assert again == [c.jpeg for c in captures[:3]]  # ... and each is the one block seen by that camera


# --- distractors and family differences ---------------------------------------------------------------------


def test_every_pallet_carries_the_shared_stamps(monkeypatch: pytest.MonkeyPatch) -> None:
    flake_stamps: list[tuple[int, str]] = []
    original_brand = flake_marks.brand_mark

    def spy_brand(
        albedo: np.ndarray,
        height: np.ndarray,
        rng: np.random.Generator,
        box: flake_marks.Box,
        design: flake_marks.BrandDesign,
    ) -> None:
        flake_stamps.append((len(flake_stamps) // 6, design.name))
        original_brand(albedo, height, rng, box, design)

    monkeypatch.setattr(flake_marks, "brand_mark", spy_brand)
    for pallet in range(3):
        for position in range(6):
            flakepress.render_block(BlockKey(0, pallet, position), (48, 30))
    assert flake_stamps == [(p, "ippc" if b in (1, 4) else "epal") for p in range(3) for b in range(6)]

    chip_stamps: list[int] = []
    current = [0]  # the pallet being rendered
    original_stamp = chipsplat.texture._add_stamp

    def spy_stamp(canvas: np.ndarray, rng: np.random.Generator, box: chipsplat.texture.Box) -> None:
        chip_stamps.append(current[0])
        original_stamp(canvas, rng, box)

    monkeypatch.setattr(chipsplat.texture, "_add_stamp", spy_stamp)
    for pallet in range(12):
        current[0] = pallet
        for position in range(6):
            render_block(0, pallet, position, (48, 30))
    assert set(chip_stamps) == set(range(12))


def _statistics(family: str, seed: int) -> np.ndarray:
    """Per capture (log): detail at three scales, chroma detail, saturation, red/blue, x/y gradient ratio."""
    config = SynthConfig(pallets=4, cameras=2, frames=1, width=140, height=88, families=(family,), seed=seed)

    def detail(grey: np.ndarray) -> float:
        centre = grey[1:-1, 1:-1] * 4 - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
        return float(np.abs(centre).mean())

    def halve(grey: np.ndarray) -> np.ndarray:
        return (grey[:-1:2, :-1:2] + grey[1::2, :-1:2] + grey[:-1:2, 1::2] + grey[1::2, 1::2]) / 4

    rows = []
    for capture_ in iter_captures(config):
        pixels = np.asarray(capture_.image(), dtype=np.float64)
        grey = pixels.mean(axis=2)
        level = grey.mean() + 1.0
        red_green = pixels[..., 0] - pixels[..., 1]
        gradient_x, gradient_y = np.abs(np.diff(grey, axis=1)).mean(), np.abs(np.diff(grey, axis=0)).mean()
        rows.append(
            (
                detail(grey) / level,
                detail(halve(grey)) / level,
                detail(halve(halve(grey))) / level,
                np.abs(np.diff(red_green, axis=0)).mean() / level,
                (pixels.max(axis=2) - pixels.min(axis=2)).mean() / level,
                pixels[..., 0].mean() / (pixels[..., 2].mean() + 1.0),
                gradient_x / (gradient_y + 1e-6),
            )
        )
    return np.log(np.array(rows) + 1e-6)


def test_families_differ_in_their_image_statistics() -> None:
    """A linear discriminant on seven simple image statistics, fitted on one seed, tells the families apart
    on captures of another seed: the families are different worlds, not variations of one."""
    chip, flake = _statistics("chipsplat", 0), _statistics("flakepress", 0)
    centre_chip, centre_flake = chip.mean(axis=0), flake.mean(axis=0)
    scatter = np.cov(np.vstack([chip - centre_chip, flake - centre_flake]).T) + 1e-6 * np.eye(chip.shape[1])
    direction = np.linalg.solve(scatter, centre_flake - centre_chip)
    threshold = direction @ (centre_chip + centre_flake) / 2
    held_chip, held_flake = _statistics("chipsplat", 1), _statistics("flakepress", 1)
    accuracy = ((held_chip @ direction < threshold).mean() + (held_flake @ direction > threshold).mean()) / 2
    assert accuracy > 0.85


# --- single captures and the CLI ---------------------------------------------------------------------------


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


@pytest.mark.parametrize("station", list(STATIONS))
def test_every_flakepress_station_makes_plausible_captures(station: str) -> None:
    block = flakepress.render_block(BlockKey(0, 3, 0), (280, 175))
    rig = Rig.sample(STATIONS[station], derive_rng(5, 1))
    data = capture(
        light_block(block, rig), block, rig, Shot.sample(rig.station, derive_rng(5, 2)), (280, 175)
    )
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (280, 175)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert 15 < pixels.mean() < 160  # the real reference captures average about 40
    assert pixels.std() > 5
    assert pixels[..., 0].mean() > pixels[..., 2].mean()  # wood stays warmer than grey


def test_cli_writes_a_dataset_and_rejects_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "synth"
    argv = ["synth", str(out), "--pallets", "1", "--cameras", "1", "--frames", "1"]
    assert main([*argv, "--width", "64", "--height", "40", "--styles", "daylight", "--seed", "4"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "metadata.csv")
    assert len(list((out / "images").rglob("*.jpg"))) == 6
    assert main([*argv, "--styles", "studio"]) == 2
    assert main([*argv, "--family", "marble"]) == 2
    assert main(argv) == 1  # refuses to overwrite
    both = tmp_path / "both"
    assert (
        main(
            [
                "synth",
                str(both),
                "--pallets",
                "1",
                "--frames",
                "1",
                "--width",
                "64",
                "--height",
                "40",
                "--family",
                "all",
            ]
        )
        == 0
    )
    assert len(list((both / "images").rglob("*.jpg"))) == 2 * 6 * 2


def test_preview_contact_sheet_shows_identities_of_each_family(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    preview = tmp_path / "sheet" / "preview.png"
    argv = ["synth", str(out), "--pallets", "1", "--cameras", "1", "--frames", "3", "--width", "64"]
    assert main([*argv, "--height", "40", "--preview", str(preview)]) == 0
    with Image.open(preview) as sheet:  # six block identities, three captures each
        assert sheet.size == (3 * 64 + 2 * 4, 6 * 40 + 5 * 4)
    both = tmp_path / "both"
    argv = ["synth", str(both), "--pallets", "2", "--cameras", "1", "--frames", "2", "--width", "64"]
    assert (
        main(
            [*argv, "--height", "40", "--family", "all", "--preview", str(preview), "--preview-scale", "0.5"]
        )
        == 0
    )
    with Image.open(preview) as sheet:  # three identities of each family, tiles at half size
        assert sheet.size == (2 * 32 + 4, 6 * 20 + 5 * 4)
