"""Reading capture datasets from disk, in the two layouts the project supports.

1. ``metadata.csv`` at the root with columns ``pallet_id,path,camera,frame`` and optionally ``block`` (block
   position 0..5 on the pallet) and ``split``; any other columns are kept as ``BlockImageRecord.attributes``.
   Paths are relative to the root (absolute paths are allowed). This is what ``palletreid synth`` writes.
2. Folder per identity: ``root/<identity>/<image files>``, the camera parsed from ``cam_<n>`` in the file name
   and the frame from what follows it (``..._cam_2_1007.jpg`` is camera ``cam_2``, frame ``1007``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from models.runtime.images import IMAGE_SUFFIXES, load_image_file

METADATA_FILE = "metadata.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("pallet_id", "path", "camera", "frame")
_CAMERA_PATTERN = re.compile(r"cam_(\d+)(?:_([A-Za-z0-9]+))?")
_KNOWN_COLUMNS = frozenset({*REQUIRED_COLUMNS, "block", "split"})


class DatasetError(ValueError):
    """The dataset on disk is malformed; the message says what and where."""


@dataclass(frozen=True)
class BlockImageRecord:
    """One image of one block.

    ``identity`` is what re-identification must recover: the block (``"<pallet>/<position>"``) when the block
    position is known, otherwise the folder name (folder layout) or the pallet id.
    """

    path: Path
    identity: str
    pallet: str
    position: int | None
    camera: str
    frame: str
    split: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict, compare=False)


def read_dataset(root: Path, *, split: str | None = None) -> list[BlockImageRecord]:
    """Read the captures under ``root`` (layout auto-detected); ``split`` keeps only rows of that split."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory")
    metadata = root / METADATA_FILE
    captures = _read_metadata(root, metadata) if metadata.is_file() else _read_folders(root)
    if split is not None:
        if all(capture.split is None for capture in captures):
            raise DatasetError(f"split {split!r} requested but {root} has no 'split' column")
        captures = [capture for capture in captures if capture.split == split]
        if not captures:
            raise DatasetError(f"no captures of split {split!r} in {root}")
    return captures


def _read_metadata(root: Path, metadata: Path) -> list[BlockImageRecord]:
    with metadata.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or ()]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise DatasetError(
                f"{metadata} lacks required column(s) {', '.join(missing)}; "
                f"expected {', '.join(REQUIRED_COLUMNS)} (optional: block, split), "
                f"found {', '.join(columns) or 'none'}"
            )
        rows = [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in reader]
    if not rows:
        raise DatasetError(f"{metadata} lists no captures")
    captures: list[BlockImageRecord] = []
    missing_files: list[str] = []
    for line, row in enumerate(rows, start=2):
        empty = [name for name in REQUIRED_COLUMNS if not row.get(name)]
        if empty:
            raise DatasetError(f"{metadata}:{line}: empty value in column(s) {', '.join(empty)}")
        path = Path(row["path"])
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            missing_files.append(row["path"])
            continue
        position = _parse_position(row.get("block", ""), metadata, line)
        pallet = row["pallet_id"]
        captures.append(
            BlockImageRecord(
                path=path,
                identity=pallet if position is None else f"{pallet}/{position}",
                pallet=pallet,
                position=position,
                camera=row["camera"],
                frame=row["frame"],
                split=row.get("split") or None,
                attributes={key: value for key, value in row.items() if key not in _KNOWN_COLUMNS},
            )
        )
    if missing_files:
        shown = ", ".join(missing_files[:5])
        raise DatasetError(
            f"{len(missing_files)} of {len(rows)} image(s) listed in {metadata} do not exist "
            f"(relative to {root}): "
            f"{shown}{' ...' if len(missing_files) > 5 else ''}"
        )
    return captures


def _parse_position(text: str, metadata: Path, line: int) -> int | None:
    if not text:
        return None
    try:
        position = int(text)
    except ValueError:
        raise DatasetError(f"{metadata}:{line}: block must be an integer position, got {text!r}") from None
    if position < 0:
        raise DatasetError(f"{metadata}:{line}: block position must not be negative, got {position}")
    return position


def _read_folders(root: Path) -> list[BlockImageRecord]:
    folders = sorted(entry for entry in root.iterdir() if entry.is_dir())
    captures: list[BlockImageRecord] = []
    unnamed: list[str] = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            match = _CAMERA_PATTERN.search(path.stem)
            if match is None:
                unnamed.append(f"{folder.name}/{path.name}")
                continue
            frame = match.group(2) or path.stem
            captures.append(
                BlockImageRecord(
                    path=path,
                    identity=folder.name,
                    pallet=folder.name,
                    position=None,
                    camera=f"cam_{match.group(1)}",
                    frame=frame,
                )
            )
    if unnamed:
        raise DatasetError(
            f"{len(unnamed)} image(s) under {root} have no 'cam_<n>' in their file name, so their camera is "
            f"unknown: {', '.join(unnamed[:5])}{' ...' if len(unnamed) > 5 else ''}"
        )
    if not captures:
        raise DatasetError(
            f"no dataset found in {root}: expected {METADATA_FILE} "
            "or folders of images (root/<identity>/<image>)"
        )
    return captures


def split_query_gallery(
    captures: Sequence[BlockImageRecord], query_camera: str | None = None
) -> tuple[list[BlockImageRecord], list[BlockImageRecord]]:
    """Split into (query, gallery) by camera.

    By default the first camera in sorted order is the gallery and all others are queries; with
    ``query_camera`` that camera is the query and all others are the gallery.
    """
    cameras = sorted({capture.camera for capture in captures})
    if len(cameras) < 2:
        raise DatasetError(f"a query/gallery split needs at least two cameras, found {cameras or 'none'}")
    if query_camera is None:
        gallery_camera = cameras[0]
        query = [capture for capture in captures if capture.camera != gallery_camera]
        gallery = [capture for capture in captures if capture.camera == gallery_camera]
    else:
        if query_camera not in cameras:
            raise DatasetError(f"query camera {query_camera!r} not in dataset cameras {', '.join(cameras)}")
        query = [capture for capture in captures if capture.camera == query_camera]
        gallery = [capture for capture in captures if capture.camera != query_camera]
    return query, gallery


class BlockImageDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """Captures as ``(image_tensor, label, camera)``.

    ``label`` is the index of the capture's identity among the sorted identities, ``camera`` the index of its
    camera among the sorted camera names.
    """

    def __init__(
        self, captures: Sequence[BlockImageRecord], transform: Callable[[Image.Image], torch.Tensor]
    ) -> None:
        if not captures:
            raise DatasetError("BlockImageDataset needs at least one capture")
        self.captures = list(captures)
        self.transform = transform
        self.identities: list[str] = sorted({capture.identity for capture in self.captures})
        self.camera_names: list[str] = sorted({capture.camera for capture in self.captures})
        identity_index = {identity: index for index, identity in enumerate(self.identities)}
        camera_index = {camera: index for index, camera in enumerate(self.camera_names)}
        self.labels: list[int] = [identity_index[capture.identity] for capture in self.captures]
        self.cameras: list[int] = [camera_index[capture.camera] for capture in self.captures]

    def __len__(self) -> int:
        return len(self.captures)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        tensor = self.transform(load_image_file(self.captures[index].path))
        return tensor, self.labels[index], self.cameras[index]
