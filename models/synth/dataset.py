"""Whole synthetic datasets: pallets of six blocks, captured by several cameras over several frames."""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from models.synth.capture import CameraSetup, FrameConditions, encode_jpeg, render_capture_array
from models.synth.styles import DEFAULT_STYLES, STYLES
from models.synth.texture import TAG_CAMERA, TAG_FRAME, TAG_STYLE, age_block, derive_rng, render_block

logger = logging.getLogger(__name__)

BLOCKS_PER_PALLET = 6
METADATA_FILE = "metadata.csv"
CONFIG_FILE = "synth.json"
METADATA_COLUMNS: tuple[str, ...] = (
    "pallet_id",
    "path",
    "camera",
    "frame",
    "block",
    "style",
    "aged",
    "material",
)


def pallet_id(pallet_index: int) -> str:
    """Pallet id derived from the index, so disjoint index ranges never share ids (or identities)."""
    return f"P{pallet_index:06d}"


@dataclass(frozen=True, slots=True)
class SynthConfig:
    """Everything that determines a synthetic dataset; equal configs give byte-identical files."""

    pallets: int
    first_pallet: int = 0
    cameras: int = 2
    frames: int = 2
    styles: tuple[str, ...] = field(default=DEFAULT_STYLES)
    aged: bool = False
    seed: int = 0
    width: int = 280
    height: int = 175

    def __post_init__(self) -> None:
        if self.pallets < 1 or self.cameras < 1 or self.frames < 1:
            raise ValueError("pallets, cameras and frames must be at least 1")
        if self.first_pallet < 0 or self.seed < 0:
            raise ValueError("first_pallet and seed must not be negative")
        if self.width < 16 or self.height < 16:
            raise ValueError("width and height must be at least 16 pixels")
        unknown = [name for name in self.styles if name not in STYLES]
        if unknown or not self.styles:
            raise ValueError(f"unknown style(s) {unknown}; choose from {', '.join(STYLES)}")

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def pallet_indices(self) -> range:
        return range(self.first_pallet, self.first_pallet + self.pallets)

    @property
    def captures_per_pallet(self) -> int:
        return BLOCKS_PER_PALLET * self.cameras * self.frames * (2 if self.aged else 1)


@dataclass(frozen=True, slots=True)
class SynthCapture:
    """One rendered capture, JPEG-encoded, with its metadata."""

    pallet_id: str
    block: int
    camera: str
    frame: str
    style: str
    aged: bool
    material: str
    jpeg: bytes

    @property
    def identity(self) -> str:
        return f"{self.pallet_id}/{self.block}"

    @property
    def relative_path(self) -> str:
        return f"images/{self.pallet_id}/b{self.block}_{self.camera}_f{self.frame}.jpg"

    def image(self) -> Image.Image:
        image = Image.open(io.BytesIO(self.jpeg))
        image.load()
        return image


def camera_style(config: SynthConfig, pallet_index: int, camera: int) -> str:
    """The station style of one camera for one pallet.

    Drawn per pallet and camera, so with several styles one pallet is seen by different stations (as when it
    is dispatched at one site and returned at another), and with one style every capture uses it.
    """
    rng = derive_rng(config.seed, TAG_STYLE, pallet_index, camera)
    return config.styles[int(rng.integers(len(config.styles)))]


def render_pallet(config: SynthConfig, pallet_index: int) -> list[SynthCapture]:
    """All captures of one pallet: blocks x cameras x frames, then the aged frames if asked for."""
    captures: list[SynthCapture] = []
    identifier = pallet_id(pallet_index)
    styles = [camera_style(config, pallet_index, camera) for camera in range(config.cameras)]
    setups = [
        CameraSetup.sample(STYLES[styles[camera]], derive_rng(config.seed, TAG_CAMERA, pallet_index, camera))
        for camera in range(config.cameras)
    ]
    for position in range(BLOCKS_PER_PALLET):
        new_block = render_block(config.seed, pallet_index, position, config.size)
        textures = [(new_block, False)]
        if config.aged:
            textures.append((age_block(new_block, config.seed, pallet_index, position), True))
        for camera in range(config.cameras):
            style = STYLES[styles[camera]]
            for age_index, (texture, aged) in enumerate(textures):
                for frame_in_age in range(config.frames):
                    frame = age_index * config.frames + frame_in_age
                    conditions = FrameConditions.sample(
                        style, derive_rng(config.seed, TAG_FRAME, pallet_index, position, camera, frame)
                    )
                    pixels = render_capture_array(texture, setups[camera], conditions, config.size)
                    captures.append(
                        SynthCapture(
                            pallet_id=identifier,
                            block=position,
                            camera=f"cam_{camera + 1}",
                            frame=f"{frame:03d}",
                            style=style.name,
                            aged=aged,
                            material=texture.material,
                            jpeg=encode_jpeg(pixels, conditions.jpeg_quality),
                        )
                    )
    return captures


def iter_captures(config: SynthConfig) -> Iterator[SynthCapture]:
    """Captures of every pallet in order, in memory (for training without writing files)."""
    for pallet_index in config.pallet_indices:
        yield from render_pallet(config, pallet_index)


def _write_pallet(task: tuple[SynthConfig, int, Path]) -> list[dict[str, str]]:
    config, pallet_index, out_dir = task
    rows = []
    captures = render_pallet(config, pallet_index)
    (out_dir / "images" / pallet_id(pallet_index)).mkdir(parents=True, exist_ok=True)
    for capture in captures:
        (out_dir / capture.relative_path).write_bytes(capture.jpeg)
        rows.append(
            {
                "pallet_id": capture.pallet_id,
                "path": capture.relative_path,
                "camera": capture.camera,
                "frame": capture.frame,
                "block": str(capture.block),
                "style": capture.style,
                "aged": str(int(capture.aged)),
                "material": capture.material,
            }
        )
    return rows


def generate_dataset(
    out_dir: Path, config: SynthConfig, *, workers: int = 1, progress: bool = True, overwrite: bool = False
) -> Path:
    """Write the captures and ``metadata.csv`` under ``out_dir``; returns the metadata path.

    Pallets are rendered independently (optionally in ``workers`` processes); the output does not depend on
    the number of workers.
    """
    out_dir = Path(out_dir)
    metadata_path = out_dir / METADATA_FILE
    if metadata_path.exists() and not overwrite:
        raise FileExistsError(f"{metadata_path} exists; choose another directory or allow overwriting")
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [(config, index, out_dir) for index in config.pallet_indices]
    bar = tqdm(total=len(tasks), unit="pallet", desc="synth", disable=not progress)
    rows: list[dict[str, str]] = []
    if workers > 1:
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            for pallet_rows in pool.imap(
                _write_pallet, tasks, chunksize=max(1, min(16, len(tasks) // (workers * 8)))
            ):
                rows.extend(pallet_rows)
                bar.update()
    else:
        for task in tasks:
            rows.extend(_write_pallet(task))
            bar.update()
    bar.close()
    with metadata_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=METADATA_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    settings = asdict(config)
    settings["styles"] = list(config.styles)
    (out_dir / CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "wrote %d captures of %d pallets (%d block identities) to %s",
        len(rows),
        config.pallets,
        config.pallets * BLOCKS_PER_PALLET,
        out_dir,
    )
    return metadata_path
