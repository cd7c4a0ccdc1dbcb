"""Block detection speed on 1280x720 side views: ``python -m bench.detection`` prints one JSON document.

What a camera station's upload goes through: ``models.runtime.images.decode_image`` on the JPEG bytes, the
detector (letterbox, network, peak decoding) and the perspective crops of the blocks. Side views are rendered
by ``models.synth.sides`` (held-out background, pallet indices no training set uses) before timing starts.

With ``--dispatch-gallery N`` it also times whole dispatches over HTTP against the real service (uvicorn in a
subprocess, ``bench.latency``) on a gallery of ``N`` pallets (``bench.gallery``: the real pallets' ``cam_1``
crops, then synthetic ones): real pallets dispatched as six ``cam_2`` block crops (``blocks``) and others as
their two 1280x720 side views (``sides``), one request in flight, the two kinds taking turns so that a
changing machine load affects both alike; per kind the latency, the decisions and the mean time per stage
(from the service's ``/metrics``).
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

from app.db.migrations import upgrade_to_head
from app.matching.parameters import decision_parameters_in_force
from app.settings import Settings
from bench.captures import FIRST_BENCH_PALLET, render_pallets
from bench.gallery import Gallery
from bench.latency import DispatchKind, interleaved_dispatch_load, running_server
from bench.runner import machine_info, scratch_database
from bench.timing import latency_summary
from models.runtime.checkpoint import DEFAULT_CHECKPOINT, load_vocabulary
from models.runtime.detector import DEFAULT_DETECTOR, BlockDetector, crop_blocks
from models.runtime.images import decode_image
from models.runtime.inference import Embedder
from models.runtime.local_features import extract
from models.runtime.voting import side_scale_features
from models.synth import DEFAULT_FAMILY
from models.synth.sides import HELD_OUT_BACKGROUND, TRAINING_BACKGROUNDS, render_side

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


def run_dispatch_comparison(
    *,
    gallery_pallets: int,
    requests: int,
    warmup: int = 2,
    threads: int | None,
    seed: int = 0,
    noise: float = 0.5,
    data_dir: Path | None = None,
    words: bool = True,
) -> dict[str, Any]:
    """Dispatch latency (one request in flight) from block crops vs from side views, taking turns.

    ``2 * requests`` real pallets are enrolled from their ``cam_1`` crops; the even ones are dispatched as
    their six ``cam_2`` crops, the odd ones as their two side views (so neither kind sees a capture the
    other just recorded), each once. With ``words`` (and a vocabulary in the checkpoint) the gallery stores
    visual words as the service does, so the rule's word stage runs as in production.
    """
    settings = Settings()
    embedder = Embedder.load(DEFAULT_CHECKPOINT, num_threads=threads, precision=settings.model_precision)
    decision = decision_parameters_in_force(settings, embedder.metadata, DEFAULT_CHECKPOINT).parameters
    real_pallets = 2 * requests
    pallets = render_pallets(real_pallets, seed=seed)
    # Same seed, pallet indices and block size as the crops: the side views show the same blocks.
    side_views = [
        [
            render_side(
                seed,
                FIRST_BENCH_PALLET + index,
                side,
                DEFAULT_FAMILY,
                TRAINING_BACKGROUNDS[(index + side) % len(TRAINING_BACKGROUNDS)],
            ).jpeg
            for side in (0, 1)
        ]
        for index in range(1, real_pallets, 2)
    ]
    enrol_images = [
        decode_image(blob, max_pixels=settings.max_image_pixels, name="bench")
        for pallet in pallets
        for blob in pallet.enrol
    ]
    fingerprints = embedder.embed(enrol_images, batch_size=settings.embed_batch_size)
    geometry = decision.geometry
    features = [extract(image, geometry.extractor) for image in enrol_images]
    # the receipts were block images: stored with their side-scale features, as the service stores them
    side_scale = (
        [side_scale_features(image, geometry) for image in enrol_images] if geometry.side_scale_width else []
    )
    blocks = len(pallets[0].enrol)
    result: dict[str, Any] = {
        "gallery_pallets": gallery_pallets,
        "requests_per_kind": requests,
        "side_view_size": [1280, 720],
        "backgrounds": list(TRAINING_BACKGROUNDS),
    }
    with scratch_database(settings.database_url, data_dir) as database_url:
        upgrade_to_head(database_url)
        gallery = Gallery(
            database_url,
            model_id=embedder.model_id,
            num_parts=embedder.metadata.num_parts,
            real_fingerprints=fingerprints.reshape(real_pallets, blocks, -1),
            real_features=[features[index : index + blocks] for index in range(0, len(features), blocks)],
            real_side_scale_features=[
                side_scale[index : index + blocks] for index in range(0, len(side_scale), blocks)
            ],
            noise=noise,
            seed=seed,
            vocabulary=load_vocabulary(DEFAULT_CHECKPOINT) if words else None,
        )
        result["gallery"] = gallery.grow_to(gallery_pallets).as_dict()
        expected = gallery.real_pallet_ids()
        with running_server(database_url, DEFAULT_CHECKPOINT, threads=threads) as server:
            logger.info("dispatches from crops and from side views: %d each, taking turns", requests)
            result.update(
                interleaved_dispatch_load(
                    server,
                    {
                        "crops": DispatchKind(
                            "blocks", [list(p.query) for p in pallets[0::2]], expected[0::2]
                        ),
                        "side_views": DispatchKind("sides", side_views, expected[1::2]),
                    },
                    requests=requests,
                    warmup=warmup,
                    after_warmup=lambda: gallery.grow_to(gallery_pallets),  # forget the warm-up's events
                )
            )
    result["side_view_minus_crops_p50_ms"] = round(
        result["side_views"]["p50_ms"] - result["crops"]["p50_ms"], 1
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__)
    parser.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR, help="detector file")
    parser.add_argument("--images", type=int, default=24, help="distinct side views")
    parser.add_argument("--repeats", type=int, default=3, help="passes over them")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--dispatch-gallery",
        type=int,
        default=0,
        metavar="N",
        help="also time whole dispatches (crops vs side views) over HTTP on a gallery of N pallets (0: skip)",
    )
    parser.add_argument(
        "--dispatch-requests", type=int, default=32, help="timed dispatches per input kind (one per pallet)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="embedded PostgreSQL data directory (default: temporary)"
    )
    parser.add_argument(
        "--no-words",
        action="store_true",
        help="store no visual words in the dispatch gallery (the rule's word stage then finds nothing)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    detector = BlockDetector.load(args.detector, num_threads=args.threads)
    result = {"machine": machine_info(), "detector": detector.metadata.model_id}
    result["detection"] = run_detection_bench(detector, images=args.images, repeats=args.repeats)
    if args.dispatch_gallery:
        result["dispatch"] = run_dispatch_comparison(
            gallery_pallets=args.dispatch_gallery,
            requests=args.dispatch_requests,
            threads=args.threads,
            data_dir=args.data_dir,
            words=not args.no_words,
        )
    document = json.dumps(result, indent=2)
    if args.output is not None:
        args.output.write_text(document + "\n")
    sys.stdout.write(document + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
