"""The ``palletreid`` console script: one subcommand per job, each with its own ``--help``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

COMMAND_MODULES: dict[str, str] = {
    "serve": "app.commands.serve",
    "calibrate": "app.commands.calibrate",
    "gc": "app.commands.gc",
    "reindex": "app.commands.reindex",
    "synth": "models.cli.synth",
    "synth-sides": "models.cli.synth_sides",
    "side-crops": "models.cli.side_crops",
    "train": "models.cli.train",
    "weights": "models.cli.weights",
    "vocabulary": "models.cli.vocabulary",
    "evaluate": "models.cli.evaluate",
    "train-detector": "models.cli.train_detector",
    "detect": "models.cli.detect",
    "bench": "bench.cli",
}
"""Subcommand -> module exposing ``register(subparsers)``. Only the chosen command's module is imported, so
``palletreid serve`` loads none of the offline tooling (training, evaluation, synthetic data, benchmarks) and
works without the ``[train]`` / ``[bench]`` extras; ``--help`` without a command lists them all."""


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The first argument naming a subcommand (options before it take no values but ``--log-level``)."""
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--log-level":
            next(arguments, None)
        elif not argument.startswith("-"):
            return argument if argument in COMMAND_MODULES else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or only the one ``argv`` chooses."""
    parser = argparse.ArgumentParser(
        prog="palletreid",
        description="Recognise wooden Euro pallets from camera images of their blocks.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _chosen_command(argv) if argv is not None else None
    for name, module_name in COMMAND_MODULES.items():
        if chosen is None or name == chosen:
            importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(arguments).parse_args(arguments)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
