"""``palletreid synth-sides``: deterministic synthetic pallet side views with block boxes."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from models.synth.registry import ALL, DEFAULT_FAMILY, FAMILIES, parse_families
from models.synth.sides.dataset import SideConfig, generate_sides
from models.synth.sides.render import BLOCK_SIZE
from models.synth.sides.scene import BACKGROUNDS, HELD_OUT_BACKGROUND, TRAINING_BACKGROUNDS

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth-sides",
        help="write synthetic side views of pallets with block boxes (detector training and evaluation)",
        description=(
            "Render each pallet's long sides (three blocks each, boards, fork openings, load, film, straps, "
            "forks) seen by a posed camera over a station background, as JPEG files "
            "images/<pallet>/side_<n>.jpg plus annotations.jsonl (per image: the blocks' quads, boxes, "
            "pallet positions left to right and visible share). Side 0 shows blocks 0-2, side 1 blocks 3-5, "
            "with the same identities as `palletreid synth` gives for the same --seed, pallet indices and "
            "--block-width/--block-height. Same arguments give byte-identical files."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path, help="output directory")
    parser.add_argument("--pallets", type=int, required=True, help="number of pallets")
    parser.add_argument("--first-pallet", type=int, default=0, help="index of the first pallet")
    parser.add_argument("--sides", type=int, default=2, choices=(1, 2), help="long sides per pallet")
    parser.add_argument(
        "--family", default=DEFAULT_FAMILY, help=f"comma-separated families ({', '.join(FAMILIES)}) or {ALL}"
    )
    parser.add_argument(
        "--backgrounds",
        default=",".join(TRAINING_BACKGROUNDS),
        help=f"comma-separated station backgrounds ({', '.join(BACKGROUNDS)}); {HELD_OUT_BACKGROUND} is "
        "held out of the default for evaluation",
    )
    parser.add_argument("--aged", action="store_true", help="show the aged blocks instead of the new ones")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the whole dataset")
    parser.add_argument(
        "--station",
        type=int,
        default=0,
        help="camera station: another number renders the same pallets' blocks in scenes of their own (pose, "
        "load, covers, background, light, sensor), e.g. a dispatch station against a receipt station",
    )
    parser.add_argument("--width", type=int, default=1280, help="image width in pixels")
    parser.add_argument("--height", type=int, default=720, help="image height in pixels")
    parser.add_argument(
        "--block-width", type=int, default=BLOCK_SIZE[0], help="capture width the blocks are rendered for"
    )
    parser.add_argument(
        "--block-height", type=int, default=BLOCK_SIZE[1], help="capture height the blocks are rendered for"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes rendering pallets in parallel")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in out_dir")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = SideConfig(
            pallets=args.pallets,
            first_pallet=args.first_pallet,
            sides=args.sides,
            seed=args.seed,
            width=args.width,
            height=args.height,
            families=parse_families(args.family),
            backgrounds=tuple(name.strip() for name in args.backgrounds.split(",") if name.strip()),
            aged=args.aged,
            block_width=args.block_width,
            block_height=args.block_height,
            station=args.station,
        )
    except ValueError as error:
        logger.error("%s", error)
        return 2
    if args.workers < 1:
        logger.error("--workers must be at least 1")
        return 2
    started = time.perf_counter()
    try:
        annotations = generate_sides(args.out_dir, config, workers=args.workers, overwrite=args.overwrite)
    except FileExistsError as error:
        logger.error("%s", error)
        return 1
    elapsed = time.perf_counter() - started
    logger.info(
        "%d side views in %.1f s (%.1f views/s)", config.total_images, elapsed, config.total_images / elapsed
    )
    print(annotations)
    return 0
