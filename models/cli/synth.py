"""``palletreid synth``: write a deterministic synthetic dataset of pallet-block captures."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from PIL import Image

from models.synth.dataset import SynthConfig, generate_dataset
from models.synth.preview import contact_sheet
from models.synth.registry import ALL, DEFAULT_FAMILY, FAMILIES, parse_families, parse_styles

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic dataset of pallet-block captures (metadata.csv layout)",
        description=(
            "Render six blocks per pallet, each captured by several cameras over several frames, as JPEG "
            "files plus metadata.csv (pallet_id,path,camera,frame,block,style,aged,material,family). "
            "Each family is an independent generator (wood, ageing, cameras); with several families each "
            "renders --pallets pallets under its own pallet-id prefix. Same arguments give byte-identical "
            "files. Pallet ids derive from the pallet index, so use disjoint --first-pallet ranges for "
            "train and evaluation sets."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path, help="output directory")
    parser.add_argument("--pallets", type=int, required=True, help="number of pallets (six blocks each)")
    parser.add_argument("--first-pallet", type=int, default=0, help="index of the first pallet")
    parser.add_argument("--cameras", type=int, default=2, help="cameras per pallet")
    parser.add_argument("--frames", type=int, default=2, help="frames per camera and block")
    parser.add_argument(
        "--family",
        default=DEFAULT_FAMILY,
        help=f"comma-separated families ({', '.join(FAMILIES)}) or {ALL}",
    )
    styles = "; ".join(f"{name}: {', '.join(family.styles)}" for name, family in FAMILIES.items())
    parser.add_argument(
        "--styles",
        default="",
        help=f"comma-separated station styles to draw from (default: all of each family; {styles})",
    )
    parser.add_argument(
        "--aged", action="store_true", help="also capture every block aged (as many frames again)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the whole dataset")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering pallets in parallel")
    parser.add_argument("--width", type=int, default=280, help="capture width in pixels")
    parser.add_argument("--height", type=int, default=175, help="capture height in pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in out_dir")
    parser.add_argument(
        "--preview",
        type=Path,
        metavar="PNG",
        help="also write a contact sheet (identities of each family x captures) to this PNG file",
    )
    parser.add_argument(
        "--preview-scale",
        type=float,
        default=1.0,
        help="size of the contact sheet's tiles relative to a capture",
    )
    parser.add_argument(
        "--preview-colours",
        type=int,
        default=0,
        help="reduce the contact sheet to this many colours (a small file for docs; 0: full colour)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = SynthConfig(
            pallets=args.pallets,
            first_pallet=args.first_pallet,
            cameras=args.cameras,
            frames=args.frames,
            styles=parse_styles(args.styles),
            families=parse_families(args.family),
            aged=args.aged,
            seed=args.seed,
            width=args.width,
            height=args.height,
        )
    except ValueError as error:
        logger.error("%s", error)
        return 2
    if args.workers < 1:
        logger.error("--workers must be at least 1")
        return 2
    started = time.perf_counter()
    try:
        metadata = generate_dataset(args.out_dir, config, workers=args.workers, overwrite=args.overwrite)
    except FileExistsError as error:
        logger.error("%s", error)
        return 1
    elapsed = time.perf_counter() - started
    total = config.total_captures
    logger.info("%d captures in %.1f s (%.0f captures/s)", total, elapsed, total / elapsed)
    if args.preview is not None:
        args.preview.parent.mkdir(parents=True, exist_ok=True)
        sheet = contact_sheet(args.out_dir, scale=args.preview_scale)
        if args.preview_colours:
            sheet = sheet.quantize(args.preview_colours, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        sheet.save(args.preview, optimize=True)
        logger.info("wrote contact sheet %s", args.preview)
    print(metadata)
    return 0
