"""Real reference captures of one block: how the model and the geometric check see them.

A folder of captures that all show the same block (e.g. two cameras, two frames) is measured pairwise: the
fingerprint cosine similarity against the model's block threshold, and the homography inliers against the
geometry's ``block_inliers``. Each capture is also matched with blocks of other pallets (impostors) from
synthetic datasets, so the same-block figures can be read against what different blocks reach. Images are
decoded by the service's loader and extracted with the checkpoint's extractor settings, as in the service;
they are read where they lie and never copied.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.evaluation.features import FeatureStore
from models.evaluation.verified import distribution
from models.runtime.images import IMAGE_SUFFIXES, load_image_file
from models.runtime.inference import Embedder
from models.runtime.local_features import count_inliers
from models.runtime.visual_words import VisualVocabulary, word_similarities
from models.runtime.voting import GeometryParameters, unit_rows
from models.training.data import read_dataset

REFERENCE_FILE = "reference.json"
_CAMERA = re.compile(r"cam_?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class ReferencePair:
    first: str
    second: str
    same_camera: bool | None
    """From ``cam_N`` in the file names; ``None`` when a name carries no camera."""
    cosine: float
    inliers: int
    words: float | None = None
    """Visual-word cosine (``None``: the checkpoint has no vocabulary)."""


@dataclass(frozen=True)
class ImpostorFigures:
    """The reference captures against blocks of other pallets from one dataset."""

    dataset: str
    pallets: int
    blocks: int
    cosine: dict[str, float | int | None]
    inliers: dict[str, float | int | None]
    words: dict[str, float | int | None] | None = None


@dataclass(frozen=True)
class ReferenceReport:
    model_id: str
    checkpoint: str
    directory: str
    images: list[str]
    vocabulary_id: str | None
    block_threshold: float | None
    """The network's block threshold (``None``: the checkpoint is not calibrated)."""
    geometry: dict[str, Any]
    pairs: list[ReferencePair]
    impostors: list[ImpostorFigures]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cosine_summary(values: npt.ArrayLike) -> dict[str, float | int | None]:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        return {"n": 0, "min": None, "median": None, "p99": None, "max": None}
    return {
        "n": int(array.size),
        "min": round(float(array.min()), 4),
        "median": round(float(np.median(array)), 4),
        "p99": round(float(np.percentile(array, 99)), 4),
        "max": round(float(array.max()), 4),
    }


def reference_images(directory: Path) -> list[Path]:
    """The images of ``directory`` (sorted by name); at least two are needed for pairs."""
    images = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(images) < 2:
        raise ValueError(
            f"{directory} holds {len(images)} images; two captures of a block are needed at least"
        )
    return images


def impostor_blocks(dataset: Path, pallets: int) -> dict[tuple[str, int | None], Path]:
    """Receipt blocks (the first camera's first new frame) of the first ``pallets`` pallets of a dataset,
    by (pallet, block position)."""
    captures = read_dataset(Path(dataset))
    first_camera = min(c.camera for c in captures)
    chosen: dict[tuple[str, int | None], Path] = {}
    names = sorted({c.pallet for c in captures})[:pallets]
    kept = set(names)
    for capture in sorted(captures, key=lambda c: (c.pallet, c.frame)):
        new = capture.attributes.get("aged", "0") == "0"
        if capture.pallet in kept and capture.camera == first_camera and new:
            chosen.setdefault((capture.pallet, capture.position), capture.path)
    return chosen


def evaluate_reference(
    directory: Path,
    embedder: Embedder,
    geometry: GeometryParameters,
    *,
    block_threshold: float | None,
    checkpoint: str,
    impostor_datasets: Sequence[Path] = (),
    impostor_pallets: int = 100,
    vocabulary: VisualVocabulary | None = None,
) -> ReferenceReport:
    images = reference_images(directory)
    store = FeatureStore(geometry.extractor)
    fingerprints = unit_rows(embedder.embed([load_image_file(path) for path in images]))
    features = store.get_all(images)
    reference_words = [vocabulary.encode(f) for f in features] if vocabulary is not None else None
    words = word_similarities(reference_words, reference_words) if reference_words is not None else None
    pairs = []
    for i, j in itertools.combinations(range(len(images)), 2):
        cameras = [_CAMERA.search(images[k].name) for k in (i, j)]
        pairs.append(
            ReferencePair(
                first=images[i].name,
                second=images[j].name,
                same_camera=cameras[0].group(1) == cameras[1].group(1)
                if cameras[0] is not None and cameras[1] is not None
                else None,
                cosine=round(float(fingerprints[i] @ fingerprints[j]), 4),
                inliers=count_inliers(features[i], features[j], geometry.matcher),
                words=round(float(words[i, j]), 4) if words is not None else None,
            )
        )
    impostors = []
    for dataset in impostor_datasets:
        chosen = impostor_blocks(dataset, impostor_pallets)
        blocks = list(chosen.values())
        block_fingerprints = unit_rows(embedder.embed([load_image_file(path) for path in blocks]))
        block_features = store.get_all(blocks)
        inliers = [
            count_inliers(reference, block, geometry.matcher)
            for reference in features
            for block in block_features
        ]
        impostors.append(
            ImpostorFigures(
                dataset=str(dataset),
                pallets=len({pallet for pallet, _ in chosen}),
                blocks=len(blocks),
                cosine=cosine_summary(fingerprints @ block_fingerprints.T),
                inliers=distribution(inliers),
                words=cosine_summary(
                    word_similarities(reference_words, [vocabulary.encode(f) for f in block_features])
                )
                if vocabulary is not None and reference_words is not None
                else None,
            )
        )
    return ReferenceReport(
        model_id=embedder.model_id,
        checkpoint=checkpoint,
        directory=str(directory),
        images=[path.name for path in images],
        vocabulary_id=vocabulary.vocabulary_id if vocabulary is not None else None,
        block_threshold=block_threshold,
        geometry=asdict(geometry),
        pairs=pairs,
        impostors=impostors,
    )


def format_reference(report: ReferenceReport) -> str:
    threshold = "uncalibrated" if report.block_threshold is None else f"{report.block_threshold:.3f}"
    block_inliers = report.geometry["block_inliers"]
    lines = [
        f"reference captures in {report.directory} ({len(report.images)} images), model {report.model_id}",
        f"  block threshold {threshold}, block inliers >= {block_inliers}",
        f"  visual words: {report.vocabulary_id or 'none'}",
        "  pair                                                         camera   cosine  inliers   words",
    ]
    for pair in report.pairs:
        camera = {True: "same", False: "other", None: "?"}[pair.same_camera]
        words = "-" if pair.words is None else f"{pair.words:.3f}"
        lines.append(
            f"  {pair.first} / {pair.second}  {camera:>6}  {pair.cosine:7.3f}  {pair.inliers:7d}  {words:>6}"
        )
    for impostor in report.impostors:
        words = "" if impostor.words is None else f", words max {impostor.words['max']}"
        lines.append(
            f"  vs {impostor.blocks} blocks of {impostor.pallets} other pallets ({impostor.dataset}): "
            f"cosine max {impostor.cosine['max']}, inliers median {impostor.inliers['median']} "
            f"p99.9 {impostor.inliers['p99_9']} max {impostor.inliers['max']}{words}"
        )
    return "\n".join(lines)
