"""Whole side-view datasets: ``images/<pallet>/side_<n>.jpg``, ``annotations.jsonl``, ``sides.json``."""

from __future__ import annotations

import json
import logging
import multiprocessing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models.synth.registry import DEFAULT_FAMILY, get_family
from models.synth.seeding import derive_rng
from models.synth.sides.render import BLOCK_SIZE, SIDES_KEY, SideView, render_side, station_keys
from models.synth.sides.scene import BACKGROUNDS, TRAINING_BACKGROUNDS

logger = logging.getLogger(__name__)

ANNOTATIONS_FILE = "annotations.jsonl"
CONFIG_FILE = "sides.json"
TAG_CHOICE = 3


@dataclass(frozen=True, slots=True)
class SideConfig:
    """Everything that determines a side-view dataset; equal configs give byte-identical files.

    ``block_width``/``block_height`` must equal a crop dataset's ``--width``/``--height`` (and ``seed`` its
    seed) for the side views to show the same blocks as its crops. Datasets that differ only in ``station``
    show the same pallets at two camera stations (receipt and dispatch): same blocks, scenes of their own.
    """

    pallets: int
    first_pallet: int = 0
    sides: int = 2
    seed: int = 0
    width: int = 1280
    height: int = 720
    families: tuple[str, ...] = field(default=(DEFAULT_FAMILY,))
    backgrounds: tuple[str, ...] = TRAINING_BACKGROUNDS
    aged: bool = False
    block_width: int = BLOCK_SIZE[0]
    block_height: int = BLOCK_SIZE[1]
    station: int = 0

    def __post_init__(self) -> None:
        if self.pallets < 1 or self.sides not in (1, 2):
            raise ValueError("pallets must be at least 1 and sides 1 or 2")
        if self.first_pallet < 0 or self.seed < 0 or self.station < 0:
            raise ValueError("first_pallet, seed and station must not be negative")
        if self.width < 64 or self.height < 36:
            raise ValueError("side views must be at least 64x36 pixels")
        for family in self.families:
            get_family(family)
        unknown = [name for name in self.backgrounds if name not in BACKGROUNDS]
        if unknown or not self.backgrounds:
            raise ValueError(f"unknown backgrounds {unknown}; choose from {', '.join(BACKGROUNDS)}")

    @property
    def total_images(self) -> int:
        return len(self.families) * self.pallets * self.sides


def background_of(config: SideConfig, family: str, pallet_index: int, side: int) -> str:
    """The station background of one view, drawn from the config's backgrounds by its own stream."""
    stream = derive_rng(
        config.seed, SIDES_KEY, TAG_CHOICE, pallet_index, side, len(family), *station_keys(config.station)
    )
    return config.backgrounds[int(stream.integers(len(config.backgrounds)))]


def render_views(config: SideConfig, family: str, pallet_index: int) -> list[SideView]:
    """The side views of one pallet."""
    return [
        render_side(
            config.seed,
            pallet_index,
            side,
            family,
            background_of(config, family, pallet_index, side),
            (config.width, config.height),
            aged=config.aged,
            block_size=(config.block_width, config.block_height),
            station=config.station,
        )
        for side in range(config.sides)
    ]


def _write_pallet(task: tuple[SideConfig, str, int, Path]) -> list[dict[str, Any]]:
    config, family, pallet_index, out_dir = task
    views = render_views(config, family, pallet_index)
    records = []
    for view in views:
        path = out_dir / view.relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(view.jpeg)
        records.append(view.record())
    return records


def generate_sides(
    out_dir: Path, config: SideConfig, *, workers: int = 1, progress: bool = True, overwrite: bool = False
) -> Path:
    """Write the views and ``annotations.jsonl`` (one JSON object per image) under ``out_dir``.

    The format is the one ``models.training.detector_annotations`` reads.
    """
    out_dir = Path(out_dir)
    annotations = out_dir / ANNOTATIONS_FILE
    if annotations.exists() and not overwrite:
        raise FileExistsError(f"{annotations} exists; choose another directory or allow overwriting")
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [
        (config, family, index, out_dir)
        for family in config.families
        for index in range(config.first_pallet, config.first_pallet + config.pallets)
    ]
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(tasks), unit="pallet", desc="sides", disable=not progress)
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for pallet_records in pool.imap(
                _write_pallet, tasks, chunksize=max(1, min(8, len(tasks) // (workers * 8)))
            ):
                records.extend(pallet_records)
                bar.update()
    else:
        for task in tasks:
            records.extend(_write_pallet(task))
            bar.update()
    bar.close()
    with annotations.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    settings = asdict(config)
    settings["families"] = list(config.families)
    settings["backgrounds"] = list(config.backgrounds)
    (out_dir / CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %d side views of %d pallets to %s", len(records), len(tasks), out_dir)
    return annotations
