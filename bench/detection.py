"""Block detection speed on 1280x720 side views: ``python -m bench.detection`` prints one JSON document.

What a camera station's upload goes through: ``models.runtime.images.decode_image`` on the JPEG bytes, the
detector (letterbox, network, peak decoding) and the perspective crops of the blocks. Side views are rendered
by ``models.synth.sides`` (held-out background, pallet indices no training set uses) before timing starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.runner import machine_info
from bench.timing import latency_summary
from models.runtime.detector import DEFAULT_DETECTOR, BlockDetector, crop_blocks
from models.runtime.images import decode_image
from models.synth.sides import HELD_OUT_BACKGROUND, render_side

logger = logging.getLogger(__name__)

DETECTION_MS_TARGET = 80.0
"""Detection (decode + detector) per 1280x720 side view, median, on the development CPU."""
FIRST_PALLET = 990_000


def run_detection_bench(
    detector: BlockDetector, *, images: int = 24, repeats: int = 3, size: tuple[int, int] = (1280, 720)
) -> dict[str, Any]:
    """Median and tail milliseconds per side view for decode, detect and crop, and the target."""
    views = [
        render_side(
            0,
            FIRST_PALLET + index,
            index % 2,
            ("chipsplat", "flakepress")[index % 2],
            HELD_OUT_BACKGROUND,
            size,
        )
        for index in range(images)
    ]
    detector.detect(decode_image(views[0].jpeg, name="warm-up"))
    decode_s, detect_s, crop_s = [], [], []
    found = []
    for _ in range(repeats):
        for view in views:
            started = time.perf_counter()
            image = decode_image(view.jpeg, name="bench")
            decoded = time.perf_counter()
            detections = detector.detect(image)
            detected = time.perf_counter()
            crop_blocks(image, detections)
            cropped = time.perf_counter()
            decode_s.append(decoded - started)
            detect_s.append(detected - decoded)
            crop_s.append(cropped - detected)
            found.append(len(detections))
    total = np.array(decode_s) + np.array(detect_s)
    median_ms = float(np.median(total) * 1000)
    return {
        "image_size": list(size),
        "input_size": list(detector.metadata.input_size),
        "images": images,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "decode_ms": latency_summary(decode_s),
        "detect_ms": latency_summary(detect_s),
        "crop_ms": latency_summary(crop_s),
        "decode_plus_detect_ms": latency_summary(list(total)),
        "blocks_per_image_mean": float(np.mean(found)),
        "targets": {
            "detection_ms": {
                "target": DETECTION_MS_TARGET,
                "value": round(median_ms, 1),
                "met": median_ms <= DETECTION_MS_TARGET,
            }
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__)
    parser.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR, help="detector file")
    parser.add_argument("--images", type=int, default=24, help="distinct side views")
    parser.add_argument("--repeats", type=int, default=3, help="passes over them")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    detector = BlockDetector.load(args.detector, num_threads=args.threads)
    result = {"machine": machine_info(), "detector": detector.metadata.model_id}
    result["detection"] = run_detection_bench(detector, images=args.images, repeats=args.repeats)
    document = json.dumps(result, indent=2)
    if args.output is not None:
        args.output.write_text(document + "\n")
    sys.stdout.write(document + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
