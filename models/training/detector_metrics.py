"""Detection figures on annotated side views: precision and recall at IoU 0.5 and 0.75, order, timing."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from models.runtime.detector import BlockDetector, Box, Detection, box_iou
from models.runtime.images import load_image_file
from models.synth.sides.dataset import AnnotatedView

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
