"""The ``palletreid`` console script: one subcommand per job, each with its own ``--help``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules that expose ``register(subparsers)``; imported lazily so ``--help`` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "app.commands.serve",
    "models.cli.synth",
    "models.cli.train",
    "models.cli.weights",
    "models.cli.evaluate",
    "app.commands.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="palletreid",
        description="Recognise wooden Euro pallets from camera images of their blocks.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
