"""``palletreid side-crops``: cut the annotated blocks of side views into a capture dataset for training."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from models.runtime.detector import CROP_SIZE

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "side-crops",
        help="cut the annotated blocks of side views into a capture dataset (fingerprint training data)",
        description=(
            "Cut every annotated block of a side-view dataset (annotations.jsonl, as `palletreid "
            "synth-sides` writes it) out with the service's own crop (face quad rectified) and write the "
            "crops as a capture dataset: images/<pallet>/b<position>_side_<n>.jpg plus metadata.csv (camera "
            "'side'). The identities are the annotations' <pallet>/<position>: pass the output to "
            "`palletreid train --extra-data` beside a `palletreid synth` dataset of the same --seed and "
            "pallets and the crops train the same blocks' classes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("sides_dir", type=Path, help="annotated side-view dataset")
    parser.add_argument("out_dir", type=Path, help="output directory")
    parser.add_argument("--crop-width", type=int, default=CROP_SIZE[0], help="crop width in pixels")
    parser.add_argument("--crop-height", type=int, default=CROP_SIZE[1], help="crop height in pixels")
    parser.add_argument("--margin", type=float, default=0.0, help="crop margin around the face, fraction")
    parser.add_argument(
        "--min-visible",
        type=float,
        default=0.5,
        help="leave out blocks of which less than this share is visible (film, straps, forks, image edge)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes cutting views in parallel")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in out_dir")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from models.training.detector_annotations import AnnotationError
    from models.training.side_crops import SideCropConfig, write_side_crops

    if args.workers < 1:
        logger.error("--workers must be at least 1")
        return 2
    try:
        config = SideCropConfig(
            size=(args.crop_width, args.crop_height), margin=args.margin, min_visible=args.min_visible
        )
    except ValueError as error:
        logger.error("%s", error)
        return 2
    started = time.perf_counter()
    try:
        metadata, crops = write_side_crops(
            args.sides_dir, args.out_dir, config, workers=args.workers, overwrite=args.overwrite
        )
    except (AnnotationError, FileExistsError, ValueError) as error:
        logger.error("%s", error)
        return 1
    logger.info("%d crops in %.1f s", crops, time.perf_counter() - started)
    print(metadata)
    return 0
