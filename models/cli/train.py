"""``palletreid train``: train the PCB fingerprint network and export an inference checkpoint."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.training.config import TrainConfig

logger = logging.getLogger(__name__)

ARCHITECTURES = ("efficientnet_lite0", "mobilenet_v2", "resnet18", "resnet34", "resnet50")
"""The names of ``models.runtime.pcb.BACKBONES``, spelled out so that ``--help`` does not import torch."""

# flag destination -> config key, for the explicit flags that mirror config keys
_FLAG_KEYS: dict[str, str] = {
    "data": "data_dir",
    "out": "out_dir",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "time_budget_minutes": "time_budget_minutes",
    "ids_per_batch": "ids_per_batch",
    "instances_per_id": "instances_per_id",
    "lr": "lr",
    "seed": "seed",
    "arch": "arch",
    "num_parts": "num_parts",
    "part_dim": "part_dim",
    "triplet": "triplet",
    "workers": "workers",
    "threads": "threads",
    "device": "device",
    "weights": "weights",
    "pretrained": "pretrained",
    "init_checkpoint": "init_checkpoint",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the PCB fingerprint network",
        description=(
            "Train the PCB network on the block identities of a dataset (metadata.csv or folder-per-identity "
            "layout; only split=='train' rows when a split column exists). Settings: the defaults of "
            "models.training.config.TrainConfig (the shipped model's recipe), then an optional TOML file of "
            "overrides (--config), then --set key=value, then the explicit flags. The run directory "
            "receives state.pt (for --resume), history.csv, training_curve.png, config.json and the exported "
            "inference checkpoint model.safetensors. Training stops at the first of epochs / max steps / "
            "time budget and always exports. Flags left out keep the config's value; "
            "TrainConfig lists every key and its default."
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file overriding some TrainConfig defaults (keys = field names)",
    )
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='override any config key, value in TOML syntax (e.g. --set lr=3e-4 --set optimizer="sgd")',
    )
    parser.add_argument(
        "--resume", type=Path, default=None, help="run directory (or its state.pt) to continue"
    )
    parser.add_argument("--data", type=Path, default=None, help="dataset root directory")
    parser.add_argument("--out", type=Path, default=None, help="run directory for checkpoints and the export")
    parser.add_argument(
        "--extra-data",
        type=Path,
        action="append",
        default=None,
        metavar="DIR",
        help="another dataset whose captures join --data's (the same pallet and block position is the same "
        "identity), e.g. block crops cut from side views by `palletreid side-crops`; repeatable",
    )
    parser.add_argument("--epochs", type=float, default=None, help="epochs (passes over the identities)")
    parser.add_argument("--max-steps", type=int, default=None, help="maximum optimiser steps (0: no limit)")
    parser.add_argument(
        "--time-budget-minutes",
        type=float,
        default=None,
        help="stop and export after this much training time",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per batch; sets ids-per-batch = batch-size / instances-per-id",
    )
    parser.add_argument("--ids-per-batch", type=int, default=None, help="identities per batch (P)")
    parser.add_argument(
        "--instances-per-id", type=int, default=None, help="captures per identity in a batch (K)"
    )
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("--arch", choices=ARCHITECTURES, default=None, help="backbone")
    parser.add_argument("--num-parts", type=int, default=None, help="number of parts (stripes)")
    parser.add_argument("--part-dim", type=int, default=None, help="dimensions per part")
    parser.add_argument(
        "--triplet",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="batch-hard triplet loss on/off",
    )
    parser.add_argument(
        "--weights", type=Path, default=None, help="state dict of the full --arch network to start from"
    )
    parser.add_argument(
        "--init-checkpoint",
        type=Path,
        default=None,
        help="fine-tune: start the trunk and part reductions from this palletreid checkpoint (same arch, "
        "parts and dims); the classifiers start fresh",
    )
    parser.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start from the verified ImageNet file of --arch (as fetched by `palletreid weights fetch`)",
    )
    parser.add_argument("--workers", type=int, default=None, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    parser.set_defaults(handler=run)


def _overrides(args: argparse.Namespace, base: TrainConfig) -> dict[str, Any]:
    from models.training.config import TrainingError, parse_assignment

    overrides: dict[str, Any] = dict(parse_assignment(text) for text in args.assignments)
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = str(value) if isinstance(value, Path) else value
    if args.extra_data is not None:
        overrides["extra_data_dirs"] = [str(path) for path in args.extra_data]
    if args.batch_size is not None:
        instances = int(overrides.get("instances_per_id", base.instances_per_id))
        if args.batch_size % instances:
            raise TrainingError(
                f"--batch-size {args.batch_size} is not a multiple of instances_per_id={instances}"
            )
        overrides["ids_per_batch"] = args.batch_size // instances
    return overrides


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Config file (or the resumed run's config), then --set, then explicit flags."""
    from models.training.config import TrainConfig, TrainingError, apply_overrides, load_config
    from models.training.loop import load_state

    if args.resume is not None:
        if args.config is not None:
            raise TrainingError("--resume continues with the run's saved config; do not pass --config")
        base = apply_overrides(TrainConfig(), load_state(args.resume)["config"])
    else:
        base = load_config(args.config)
    return apply_overrides(base, _overrides(args, base))


def run(args: argparse.Namespace) -> int:
    # imported here so that `palletreid --help` does not pay for torch
    from models.training.config import TrainingError
    from models.training.loop import train

    try:
        config = resolve_config(args)
        result = train(config, resume=args.resume)
    except TrainingError as error:
        logger.error("%s", error)
        return 2
    print(
        f"{result.checkpoint}\t{result.metadata.model_id}\tsteps={result.steps}\tloss={result.final_loss:.4f}"
    )
    return 0
