"""Whole synthetic datasets: pallets of six blocks, captured by several cameras over several frames.

Family-independent: every family renders through ``models.synth.family.SynthFamily``. With several
families, each renders ``pallets`` pallets (its own pallet-id prefix), so a family's pallets are the same
whichever other families are written alongside.
"""

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

from models.synth.family import BlockKey
from models.synth.registry import DEFAULT_FAMILY, family_styles, get_family, styles_of

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
    "family",
)


def pallet_id(pallet_index: int, family: str = DEFAULT_FAMILY) -> str:
    """Pallet id derived from the index, so disjoint index ranges never share ids (or identities)."""
    return get_family(family).pallet_id(pallet_index)


@dataclass(frozen=True, slots=True)
class SynthConfig:
    """Everything that determines a synthetic dataset; equal configs give byte-identical files.

    ``styles`` empty means every station style of each family; otherwise each family draws from its own
    styles among them (style names are unique across families).
    """

    pallets: int
    first_pallet: int = 0
    cameras: int = 2
    frames: int = 2
    styles: tuple[str, ...] = ()
    aged: bool = False
    seed: int = 0
    width: int = 280
    height: int = 175
    families: tuple[str, ...] = field(default=(DEFAULT_FAMILY,))

    def __post_init__(self) -> None:
        if self.pallets < 1 or self.cameras < 1 or self.frames < 1:
            raise ValueError("pallets, cameras and frames must be at least 1")
        if self.first_pallet < 0 or self.seed < 0:
            raise ValueError("first_pallet and seed must not be negative")
        if self.width < 16 or self.height < 16:
            raise ValueError("width and height must be at least 16 pixels")
        if not self.families or len(set(self.families)) != len(self.families):
            raise ValueError("families must name at least one family, each once")
        family_styles(self.families, self.styles)  # raises for unknown families and styles

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def pallet_indices(self) -> range:
        return range(self.first_pallet, self.first_pallet + self.pallets)

    @property
    def captures_per_pallet(self) -> int:
        return BLOCKS_PER_PALLET * self.cameras * self.frames * (2 if self.aged else 1)

    @property
    def total_captures(self) -> int:
        return len(self.families) * self.pallets * self.captures_per_pallet


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
    family: str
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

    def metadata_row(self) -> dict[str, str]:
        return {
            "pallet_id": self.pallet_id,
            "path": self.relative_path,
            "camera": self.camera,
            "frame": self.frame,
            "block": str(self.block),
            "style": self.style,
            "aged": str(int(self.aged)),
            "material": self.material,
            "family": self.family,
        }


def render_pallet(config: SynthConfig, pallet_index: int, family: str | None = None) -> list[SynthCapture]:
    """All captures of one pallet of ``family`` (default: the config's first): blocks x cameras x frames,
    then the aged frames if asked for."""
    name = family or config.families[0]
    generator = get_family(name)
    styles = styles_of(name, config.styles)
    identifier = generator.pallet_id(pallet_index)
    cameras = [
        generator.camera(config.seed, pallet_index, camera, styles) for camera in range(config.cameras)
    ]
    captures: list[SynthCapture] = []
    for position in range(BLOCKS_PER_PALLET):
        key = BlockKey(config.seed, pallet_index, position)
        new_block = generator.new_block(key, config.size)
        blocks = [(new_block, False)]
        if config.aged:
            blocks.append((generator.aged_block(new_block, key), True))
        for camera_index, camera in enumerate(cameras):
            for age_index, (block, aged) in enumerate(blocks):
                frames = [age_index * config.frames + frame for frame in range(config.frames)]
                files = generator.capture_frames(block, camera, key, camera_index, frames, config.size)
                for frame, jpeg in zip(frames, files, strict=True):
                    captures.append(
                        SynthCapture(
                            pallet_id=identifier,
                            block=position,
                            camera=f"cam_{camera_index + 1}",
                            frame=f"{frame:03d}",
                            style=generator.camera_style(camera),
                            aged=aged,
                            material=generator.material(block),
                            family=name,
                            jpeg=jpeg,
                        )
                    )
    return captures


def iter_captures(config: SynthConfig) -> Iterator[SynthCapture]:
    """Captures of every pallet of every family in order, in memory (for training without writing files)."""
    for family in config.families:
        for pallet_index in config.pallet_indices:
            yield from render_pallet(config, pallet_index, family)


def _write_pallet(task: tuple[SynthConfig, str, int, Path]) -> list[dict[str, str]]:
    config, family, pallet_index, out_dir = task
    captures = render_pallet(config, pallet_index, family)
    (out_dir / "images" / captures[0].pallet_id).mkdir(parents=True, exist_ok=True)
    for capture in captures:
        (out_dir / capture.relative_path).write_bytes(capture.jpeg)
    return [capture.metadata_row() for capture in captures]


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
    tasks = [
        (config, family, index, out_dir) for family in config.families for index in config.pallet_indices
    ]
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
    settings["families"] = list(config.families)
    (out_dir / CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "wrote %d captures of %d pallets (%d block identities) to %s",
        len(rows),
        len(tasks),
        len(tasks) * BLOCKS_PER_PALLET,
        out_dir,
    )
    return metadata_path
