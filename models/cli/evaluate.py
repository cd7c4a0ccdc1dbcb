"""``palletreid evaluate``: measure a checkpoint on a capture dataset and write report.json plus plots."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from models.evaluation.calibration import DEFAULT_MAX_UNKNOWN_MATCH_RATE
from models.runtime.thresholds import DEFAULT_THRESHOLDS_FILE, read_thresholds
from models.runtime.voting import DEFAULT_SHORTLIST_SIZE, DEFAULT_TOP_K

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure a checkpoint: block-level CMC/mAP and pallet-level open-set identification",
        description=(
            "Embed a dataset with a checkpoint and report block-level rank-1/5/10 and mAP across cameras, "
            "and pallet-level identification of known pallets and registration of unknown ones with the "
            "service's voting rule. Writes report.json, PNG plots and an embedding cache into --out."
        ),
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="dataset root (metadata.csv or folder per identity)"
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="checkpoint .safetensors (default: the shipped one)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--split", default=None, help="evaluate only the rows of this split (metadata.csv 'split' column)"
    )
    parser.add_argument(
        "--unknown-fraction",
        type=float,
        default=0.5,
        help="share of pallets (the last ones in sorted order) kept out of the gallery as unknown "
        "(default 0.5)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help=f"neighbours per query block (default {DEFAULT_TOP_K})",
    )
    parser.add_argument(
        "--shortlist",
        type=int,
        default=DEFAULT_SHORTLIST_SIZE,
        help="pallets verified by one-to-one block pairing per query, the strongest by neighbour evidence "
        f"(default {DEFAULT_SHORTLIST_SIZE})",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--thresholds-from",
        type=Path,
        default=None,
        help="JSON with block_threshold, min_votes, score_threshold (a thresholds.json or report.json); "
        f"default: {DEFAULT_THRESHOLDS_FILE} if it exists, else calibrate on this data",
    )
    source.add_argument(
        "--calibrate",
        action="store_true",
        help="choose the thresholds on this data and write them to OUT/thresholds.json",
    )
    parser.add_argument(
        "--max-unknown-match-rate",
        type=float,
        default=DEFAULT_MAX_UNKNOWN_MATCH_RATE,
        help="calibration target for unknown pallets wrongly matched (default %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the block-order shuffling of queries")
    parser.add_argument(
        "--query-where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="keep only queries whose metadata.csv column has this value, e.g. aged=1 for long-term change "
        "figures (repeatable; the gallery is unaffected)",
    )
    parser.add_argument(
        "--gallery-where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="keep only gallery captures whose metadata.csv column has this value, e.g. aged=0 (repeatable)",
    )
    parser.set_defaults(handler=run)


def _parse_where(assignments: list[str]) -> dict[str, str]:
    required: dict[str, str] = {}
    for assignment in assignments:
        column, separator, value = assignment.partition("=")
        if not separator or not column:
            raise ValueError(f"--query-where / --gallery-where expect COLUMN=VALUE, got {assignment!r}")
        required[column.strip()] = value.strip()
    return required


def run(args: argparse.Namespace) -> int:
    from models.evaluation.evaluate import evaluate_checkpoint
    from models.evaluation.report import REPORT_FILE, THRESHOLDS_FILE, format_summary
    from models.runtime.checkpoint import CheckpointError
    from models.runtime.thresholds import write_thresholds
    from models.runtime.voting import VotingThresholds

    thresholds_path: Path | None = args.thresholds_from
    if thresholds_path is None and not args.calibrate and DEFAULT_THRESHOLDS_FILE.is_file():
        thresholds_path = DEFAULT_THRESHOLDS_FILE
    try:
        thresholds = read_thresholds(thresholds_path) if thresholds_path is not None else None
        if thresholds is None and not args.calibrate:
            logger.warning(
                "no thresholds given or shipped: calibrating on the evaluation data (optimistic figures)"
            )
        report = evaluate_checkpoint(
            args.checkpoint,
            args.data,
            out_dir=args.out,
            split=args.split,
            unknown_fraction=args.unknown_fraction,
            top_k=args.top_k,
            shortlist_size=args.shortlist,
            thresholds=thresholds,
            thresholds_source=str(thresholds_path) if thresholds_path is not None else "calibrated",
            max_unknown_match_rate=args.max_unknown_match_rate,
            batch_size=args.batch_size,
            num_threads=args.threads,
            device=args.device,
            seed=args.seed,
            query_where=_parse_where(args.query_where),
            gallery_where=_parse_where(args.gallery_where),
        )
    except (OSError, ValueError, CheckpointError) as error:
        logger.error("evaluation failed: %s", error)
        return 1

    report.write_json(args.out / REPORT_FILE)
    if report.pallet is not None and report.pallet.calibration is not None:
        write_thresholds(
            args.out / THRESHOLDS_FILE,
            VotingThresholds(
                block_threshold=float(report.pallet.thresholds["block_threshold"]),
                min_votes=int(report.pallet.thresholds["min_votes"]),
                score_threshold=float(report.pallet.thresholds["score_threshold"]),
            ),
            model_id=report.model_id,
            dataset=report.dataset,
            top_k=report.pallet.top_k,
            shortlist_size=report.pallet.shortlist_size,
            **report.pallet.calibration,
            calibration_figures=report.pallet.at_thresholds,
        )
    print(format_summary(report))
    print(f"\nreport: {args.out / REPORT_FILE}")
    return 0
