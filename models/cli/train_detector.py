"""``palletreid train-detector``: train the block detector on annotated side views and export it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-detector",
        help="train the block detector on side views written by `palletreid synth-sides`",
        description=(
            "Train the centre-point block detector (MobileNetV2 trunk from ImageNet, fetched with "
            "`palletreid weights fetch mobilenet_v2` if not cached) on an annotated side-view dataset, then "
            "export it as one .safetensors file (fp16 weights, header with input size and thresholds). "
            "Training stops at --steps or --minutes, whichever comes first, with the learning rate annealed "
            "over that; WORK_DIR/state.pt (saved every --checkpoint-every steps) lets --resume continue."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True, help="side-view dataset (annotations.jsonl)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/detector/block_detector.safetensors"), help="exported detector"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("runs/detector"), help="state and history")
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget (stops earlier)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    parser.add_argument("--input-width", type=int, default=512, help="network input width (multiple of 16)")
    parser.add_argument("--input-height", type=int, default=288, help="network input height (multiple of 16)")
    parser.add_argument(
        "--weights", type=Path, default=None, help="ImageNet MobileNetV2 state dict to start from"
    )
    parser.add_argument("--no-pretrained", action="store_true", help="start from random weights")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and augmentation seed")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--checkpoint-every", type=int, default=25, help="steps between saved states")
    parser.add_argument("--resume", action="store_true", help="continue from WORK_DIR/state.pt")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, or cuda (bfloat16 autocast)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from models.training.detector_loop import DetectorTrainConfig, train_detector
    from models.training.pretrained import PretrainedWeightsError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = DetectorTrainConfig(
            data_dir=args.data,
            out=args.out,
            work_dir=args.work_dir,
            input_width=args.input_width,
            input_height=args.input_height,
            batch_size=args.batch_size,
            max_steps=args.steps,
            time_budget_minutes=args.minutes,
            lr=args.lr,
            pretrained=not args.no_pretrained,
            weights=args.weights,
            seed=args.seed,
            workers=args.workers,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            device=args.device,
        )
        metadata, state = train_detector(config)
    except (ValueError, FileNotFoundError, PretrainedWeightsError) as error:
        logger.error("%s", error)
        return 2
    logger.info(
        "%d steps in %.0f s; exported %s (%s)", state.step, state.elapsed_seconds, args.out, metadata.model_id
    )
    print(args.out)
    return 0
