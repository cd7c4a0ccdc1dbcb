"""Block crops cut from annotated side views, written as a capture dataset (``metadata.csv`` layout).

The service crops the blocks it detects in a side view with ``models.runtime.detector.crop_blocks``; the same
function cuts the annotated face quads here, so a network trained on these crops sees side-view blocks the way
the service will show them (small faces upsampled, the station's light, film, straps and forks). The
identities are the annotations' ``<pallet>/<position>``, which a ``palletreid synth`` dataset of the same seed
and pallets shares: passed to ``palletreid train --extra-data``, the crops join the camera captures' classes.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from models.runtime.detector import CROP_SIZE, Detection, crop_blocks, encode_crop
from models.runtime.images import load_image_file
from models.training.data import METADATA_FILE
from models.training.detector_annotations import AnnotatedView, read_annotations

logger = logging.getLogger(__name__)

SIDE_CAMERA = "side"
"""The ``camera`` column of every crop: a side-view station, apart from the block cameras."""
COLUMNS = ("pallet_id", "path", "camera", "frame", "block", "aged", "family", "background", "visible")


@dataclass(frozen=True, slots=True)
class SideCropConfig:
    size: tuple[int, int] = CROP_SIZE
    margin: float = 0.0
    min_visible: float = 0.5

    def __post_init__(self) -> None:
        if min(self.size) < 8:
            raise ValueError("crops must be at least 8 x 8 pixels")
        if not 0.0 <= self.margin < 0.5:
            raise ValueError("margin must be in [0, 0.5)")
        if not 0.0 <= self.min_visible <= 1.0:
            raise ValueError("min_visible must be in [0, 1]")


def _crop_view(task: tuple[AnnotatedView, Path, SideCropConfig]) -> list[dict[str, str]]:
    view, out_dir, config = task
    blocks = [block for block in view.blocks if block.visible >= config.min_visible]
    if not blocks:
        return []
    image = load_image_file(view.path)
    crops = crop_blocks(
        image,
        [Detection(block.box, 1.0, block.quad) for block in blocks],
        size=config.size,
        margin=config.margin,
    )
    rows = []
    for block, crop in zip(blocks, crops, strict=True):
        relative = Path("images") / view.pallet_id / f"b{block.position}_{SIDE_CAMERA}_{view.side}.jpg"
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_crop(crop))  # the JPEG the service stores and fingerprints
        rows.append(
            {
                "pallet_id": view.pallet_id,
                "path": relative.as_posix(),
                "camera": SIDE_CAMERA,
                "frame": f"{view.side:03d}",
                "block": str(block.position),
                "aged": "1" if view.aged else "0",
                "family": view.family,
                "background": view.background,
                "visible": f"{block.visible:.3f}",
            }
        )
    return rows


def write_side_crops(
    sides_dir: Path,
    out_dir: Path,
    config: SideCropConfig = SideCropConfig(),
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, int]:
    """Cut every annotated block seen at least ``config.min_visible`` into ``out_dir``; returns the
    ``metadata.csv`` written and the number of crops."""
    views: Sequence[AnnotatedView] = read_annotations(sides_dir)
    out_dir = Path(out_dir)
    metadata = out_dir / METADATA_FILE
    if metadata.exists() and not overwrite:
        raise FileExistsError(f"{metadata} exists; choose another directory or allow overwriting")
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [(view, out_dir, config) for view in views]
    rows: list[dict[str, str]] = []
    bar = tqdm(total=len(tasks), unit="view", desc="side crops", disable=not progress)
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for view_rows in pool.imap(
                _crop_view, tasks, chunksize=max(1, min(16, len(tasks) // (workers * 8)))
            ):
                rows.extend(view_rows)
                bar.update()
    else:
        for task in tasks:
            rows.extend(_crop_view(task))
            bar.update()
    bar.close()
    if not rows:
        raise ValueError(f"no block in {sides_dir} is visible enough (min_visible {config.min_visible})")
    with metadata.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    skipped = sum(len(view.blocks) for view in views) - len(rows)
    logger.info(
        "cut %d block crops from %d side views into %s (%d blocks less visible than %.2f left out)",
        len(rows),
        len(views),
        out_dir,
        skipped,
        config.min_visible,
    )
    return metadata, len(rows)
