"""Detection figures on annotated side views: precision and recall at IoU 0.5 and 0.75, order, timing."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from models.runtime.detector import BlockDetector, Box, Detection, box_iou, crop_blocks
from models.runtime.images import load_image_file
from models.runtime.inference import Embedder
from models.training.data import BlockImageRecord
from models.training.detector_annotations import AnnotatedView

IOU_THRESHOLDS = (0.5, 0.75)


def match(
    detections: Sequence[Detection], truths: Sequence[Box], threshold: float
) -> list[tuple[int, int, float]]:
    """Greedy matching, best detection first: (detection, truth, IoU) index pairs with IoU >= threshold."""
    pairs = []
    taken: set[int] = set()
    for index in sorted(range(len(detections)), key=lambda i: -detections[i].confidence):
        best, best_iou = -1, threshold
        for truth_index, truth in enumerate(truths):
            if truth_index in taken:
                continue
            iou = box_iou(detections[index].box, truth)
            if iou >= best_iou:
                best, best_iou = truth_index, iou
        if best >= 0:
            taken.add(best)
            pairs.append((index, best, best_iou))
    return pairs


@dataclass
class DetectionTally:
    images: int = 0
    truths: int = 0
    detections: int = 0
    true_positives: dict[float, int] = field(default_factory=lambda: dict.fromkeys(IOU_THRESHOLDS, 0))
    exact_images: int = 0  # every block found at IoU 0.5, nothing else, in the true left-to-right order
    ious: list[float] = field(default_factory=list)

    def add(self, detections: Sequence[Detection], truths: Sequence[Box]) -> None:
        self.images += 1
        self.truths += len(truths)
        self.detections += len(detections)
        for threshold in IOU_THRESHOLDS:
            pairs = match(detections, truths, threshold)
            self.true_positives[threshold] += len(pairs)
            if threshold == IOU_THRESHOLDS[0]:
                self.ious.extend(iou for _, _, iou in pairs)
                ordered = [truth for _, truth in sorted((detection, truth) for detection, truth, _ in pairs)]
                if len(pairs) == len(truths) == len(detections) and ordered == sorted(ordered):
                    self.exact_images += 1

    def summary(self) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "images": self.images,
            "blocks": self.truths,
            "detections": self.detections,
        }
        for threshold in IOU_THRESHOLDS:
            hits = self.true_positives[threshold]
            figures[f"precision@{threshold}"] = hits / self.detections if self.detections else 1.0
            figures[f"recall@{threshold}"] = hits / self.truths if self.truths else 1.0
        figures["mean_iou_matched"] = float(np.mean(self.ious)) if self.ious else 0.0
        figures["median_iou_matched"] = float(np.median(self.ious)) if self.ious else 0.0
        figures["images_exact_and_ordered"] = self.exact_images / self.images if self.images else 1.0
        return figures


def evaluate_detector(
    detector: BlockDetector,
    views: Iterable[AnnotatedView],
    *,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, Any]:
    """Figures over all views and per background and family; detection time excludes file decoding."""
    overall = DetectionTally()
    groups: dict[str, DetectionTally] = defaultdict(DetectionTally)
    seconds: list[float] = []
    for view in tqdm(views, total=total, unit="image", desc="evaluate", disable=not progress):
        image = load_image_file(view.path)
        started = time.perf_counter()
        detections = detector.detect(image)
        seconds.append(time.perf_counter() - started)
        truths = [block.box for block in view.blocks]
        overall.add(detections, truths)
        groups[f"background={view.background}"].add(detections, truths)
        groups[f"family={view.family}"].add(detections, truths)
    report = overall.summary()
    report["ms_per_image_median"] = 1000 * float(np.median(seconds)) if seconds else 0.0
    report["groups"] = {name: tally.summary() for name, tally in sorted(groups.items())}
    return report


def _rank1_hit_flags(
    queries: np.ndarray, query_ids: Sequence[str], gallery: np.ndarray, gallery_ids: Sequence[str]
) -> list[bool]:
    """Per query: is its identity at the nearest gallery fingerprint (cosine)?"""
    if not len(query_ids):
        return []
    nearest = (queries @ gallery.T).argmax(axis=1)
    return [gallery_ids[index] == identity for identity, index in zip(query_ids, nearest, strict=True)]


def _rank1_by_family(hits: Sequence[bool], families: Sequence[str], totals: Counter[str]) -> dict[str, float]:
    """Rank-1 per family: hits of that family over ``totals[family]`` blocks (misses included)."""
    counts = Counter(family for hit, family in zip(hits, families, strict=True) if hit)
    return {family: counts[family] / total for family, total in sorted(totals.items()) if total}


def identification_from_sides(
    detector: BlockDetector,
    embedder: Embedder,
    views: Sequence[AnnotatedView],
    crops: Sequence[BlockImageRecord],
    *,
    gallery_camera: str = "cam_1",
    query_camera: str = "cam_2",
    progress: bool = True,
) -> dict[str, Any]:
    """Block rank-1 against a gallery of true crops (``gallery_camera``) for three kinds of query of the same
    blocks: true crops of another camera, crops of the side views' truth quads, and crops of the detections
    (a block the detector missed, at IoU 0.5, counts as a miss)."""
    gallery_records = [record for record in crops if record.camera == gallery_camera]
    query_records = [record for record in crops if record.camera == query_camera]
    gallery = embedder.embed([load_image_file(record.path) for record in gallery_records])
    gallery_ids = [record.identity for record in gallery_records]
    true_queries = embedder.embed([load_image_file(record.path) for record in query_records])
    truth_images: list[Image.Image] = []
    detected_images: list[Image.Image] = []
    truth_ids: list[str] = []
    detected_ids: list[str] = []
    truth_families: list[str] = []
    detected_families: list[str] = []
    for view in tqdm(views, unit="image", desc="identify", disable=not progress):
        image = load_image_file(view.path)
        truths = [Detection(block.box, 1.0, block.quad) for block in view.blocks]
        truth_images.extend(crop_blocks(image, truths))
        truth_ids.extend(block.identity for block in view.blocks)
        truth_families.extend(view.family for _ in view.blocks)
        detections = detector.detect(image)
        for detection_index, truth_index, _ in match(detections, [truth.box for truth in truths], 0.5):
            detected_images.append(crop_blocks(image, [detections[detection_index]])[0])
            detected_ids.append(view.blocks[truth_index].identity)
            detected_families.append(view.family)
    truth_queries = embedder.embed(truth_images)
    detected_queries = embedder.embed(detected_images)
    true_ids = [record.identity for record in query_records]
    true_families = [record.attributes.get("family", "unknown") for record in query_records]
    true_hits = _rank1_hit_flags(true_queries, true_ids, gallery, gallery_ids)
    truth_hits = _rank1_hit_flags(truth_queries, truth_ids, gallery, gallery_ids)
    detected_hits = _rank1_hit_flags(detected_queries, detected_ids, gallery, gallery_ids)
    side_blocks = Counter(truth_families)
    return {
        "gallery_blocks": len(gallery_ids),
        "side_view_blocks": len(truth_ids),
        "rank1_true_crops": sum(true_hits) / max(1, len(true_ids)),
        "rank1_side_views_truth_quads": sum(truth_hits) / max(1, len(truth_ids)),
        "rank1_side_views_detected": sum(detected_hits) / max(1, len(truth_ids)),
        "by_family": {
            "rank1_true_crops": _rank1_by_family(true_hits, true_families, Counter(true_families)),
            "rank1_side_views_truth_quads": _rank1_by_family(truth_hits, truth_families, side_blocks),
            "rank1_side_views_detected": _rank1_by_family(detected_hits, detected_families, side_blocks),
        },
        "model": embedder.model_id,
        "detector": detector.metadata.model_id,
    }
