"""``palletreid evaluate``: measure a checkpoint on a capture dataset and write report.json plus plots."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from models.evaluation.calibration import DEFAULT_MAX_UNKNOWN_MATCH_RATE
from models.runtime.voting import DEFAULT_SHORTLIST_SIZE, DEFAULT_TOP_K

if TYPE_CHECKING:
    from models.evaluation.report import EvaluationReport
    from models.runtime.thresholds import DecisionParameters
    from models.runtime.voting import GeometryParameters

DEFAULT_GALLERY_SIZES = "1,10,100,1000"

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure a checkpoint: block-level CMC/mAP, pallet-level open-set identification with the "
        "service's rule (network stage, then geometric verification in bands)",
        description=(
            "Embed a dataset with a checkpoint and report block-level rank-1/5/10 and mAP across cameras, "
            "and pallet-level identification of known pallets and registration of unknown ones with the "
            "service's rule: the network stage alone (full gallery, thresholds sweep) and the banded rule "
            "with geometric verification (matched / review / new) at every --gallery-sizes, each against "
            "all unknown pallets. Writes report.json, PNG plots and the embedding and local-feature caches "
            "into --out."
        ),
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="dataset root (metadata.csv or folder per identity)"
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
        default=None,
        help="neighbours per query block (default: the checkpoint's calibrated setting, else "
        f"{DEFAULT_TOP_K})",
    )
    parser.add_argument(
        "--shortlist",
        type=int,
        default=None,
        help="pallets verified by one-to-one block pairing per query, the strongest by neighbour evidence "
        f"(default: the checkpoint's calibrated setting, else {DEFAULT_SHORTLIST_SIZE})",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--thresholds-from",
        type=Path,
        default=None,
        help="thresholds.json (decision parameters) or report.json to take the thresholds from; default: "
        "the decision parameters stored in the checkpoint, else calibrate on this data",
    )
    source.add_argument(
        "--calibrate",
        action="store_true",
        help="choose the thresholds on this data and write them to OUT/thresholds.json",
    )
    parser.add_argument(
        "--store-in-checkpoint",
        action="store_true",
        help="with --calibrate: also write the calibrated decision parameters into the checkpoint's header "
        "(the weights stay as they are); the service then uses them",
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
    parser.add_argument(
        "--gallery-sizes",
        type=_sizes,
        default=_sizes(DEFAULT_GALLERY_SIZES),
        metavar="N,N,...",
        help="gallery sizes (the first N known pallets) of the verified rule; each is queried with its "
        f"pallets' dispatches and all unknown pallets' (default {DEFAULT_GALLERY_SIZES})",
    )
    parser.add_argument(
        "--network-only",
        action="store_true",
        help="skip the geometric verification (only the network stage's figures)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="threads verifying queries in parallel (default: the CPU count)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder of the embedding and local-feature caches (default: --out); share it between "
        "evaluations of one dataset",
    )
    reference = parser.add_argument_group(
        "real reference captures",
        "--reference DIR measures captures of one real block instead of a dataset: every pair's "
        "fingerprint cosine (vs the block threshold) and homography inliers (vs block_inliers), and each "
        "capture's inliers against the receipt blocks of other pallets (--impostors). The images are read "
        "in place, decoded and extracted as the service does; writes OUT/reference.json.",
    )
    reference.add_argument("--reference", type=Path, default=None, metavar="DIR")
    reference.add_argument(
        "--impostors",
        type=Path,
        action="append",
        default=[],
        metavar="DATA",
        help="dataset whose blocks are the impostors (repeatable)",
    )
    reference.add_argument(
        "--impostor-pallets", type=int, default=100, help="pallets taken from each dataset (default 100)"
    )
    parser.set_defaults(handler=run)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


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
    from models.runtime.checkpoint import (
        DEFAULT_CHECKPOINT,
        CheckpointError,
        read_metadata,
        store_decision_parameters,
    )
    from models.runtime.thresholds import read_thresholds, write_decision_parameters

    if args.store_in_checkpoint and not args.calibrate:
        logger.error("--store-in-checkpoint needs --calibrate")
        return 2
    if args.reference is not None:
        return run_reference(args)
    if args.data is None:
        logger.error("--data (or --reference) is required")
        return 2
    checkpoint: Path = args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT
    try:
        stored = read_metadata(checkpoint).decision
        top_k = args.top_k or (stored.rule.top_k if stored else DEFAULT_TOP_K)
        shortlist_size = args.shortlist or (stored.rule.shortlist_size if stored else DEFAULT_SHORTLIST_SIZE)
        if args.calibrate:
            thresholds, source = None, "calibrated"
        elif args.thresholds_from is not None:
            thresholds, source = read_thresholds(args.thresholds_from), str(args.thresholds_from)
        elif stored is not None:
            thresholds, source = stored.thresholds, f"checkpoint {checkpoint}"
        else:
            logger.warning(
                "no thresholds given or stored in the checkpoint: calibrating on the evaluation data "
                "(optimistic figures)"
            )
            thresholds, source = None, "calibrated"
        geometry, geometry_source = _geometry(args.thresholds_from, stored, checkpoint)
        report = evaluate_checkpoint(
            args.checkpoint,
            args.data,
            out_dir=args.out,
            split=args.split,
            unknown_fraction=args.unknown_fraction,
            top_k=top_k,
            shortlist_size=shortlist_size,
            thresholds=thresholds,
            thresholds_source=source,
            max_unknown_match_rate=args.max_unknown_match_rate,
            batch_size=args.batch_size,
            num_threads=args.threads,
            device=args.device,
            seed=args.seed,
            query_where=_parse_where(args.query_where),
            gallery_where=_parse_where(args.gallery_where),
            gallery_sizes=() if args.network_only else args.gallery_sizes,
            geometry=geometry,
            geometry_source=geometry_source,
            workers=args.workers,
            cache_dir=args.cache,
        )
        report.write_json(args.out / REPORT_FILE)
        calibrated = _calibrated_parameters(report, geometry)
        if calibrated is not None:
            write_decision_parameters(args.out / THRESHOLDS_FILE, calibrated)
            if args.store_in_checkpoint:
                store_decision_parameters(checkpoint, calibrated)
                print(f"decision parameters stored in {checkpoint}")
    except (OSError, ValueError, CheckpointError) as error:
        logger.error("evaluation failed: %s", error)
        return 1
    print(format_summary(report))
    print(f"\nreport: {args.out / REPORT_FILE}")
    return 0


def run_reference(args: argparse.Namespace) -> int:
    """``--reference DIR``: the real captures of one block, pairwise and against other pallets' blocks."""
    import json

    from models.evaluation.reference import REFERENCE_FILE, evaluate_reference, format_reference
    from models.runtime.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_vocabulary
    from models.runtime.inference import Embedder
    from models.runtime.voting import GeometryParameters

    checkpoint: Path = args.checkpoint if args.checkpoint is not None else DEFAULT_CHECKPOINT
    try:
        embedder = Embedder.load(checkpoint, device=args.device, num_threads=args.threads)
        decision = embedder.metadata.decision
        report = evaluate_reference(
            args.reference,
            embedder,
            decision.geometry if decision is not None else GeometryParameters(),
            block_threshold=decision.thresholds.block_threshold if decision is not None else None,
            checkpoint=str(checkpoint),
            impostor_datasets=args.impostors,
            impostor_pallets=args.impostor_pallets,
            vocabulary=load_vocabulary(checkpoint),
        )
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / REFERENCE_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    except (OSError, ValueError, CheckpointError) as error:
        logger.error("reference evaluation failed: %s", error)
        return 1
    print(format_reference(report))
    print(f"\nreport: {args.out / REFERENCE_FILE}")
    return 0


def _geometry(
    thresholds_from: Path | None, stored: DecisionParameters | None, checkpoint: Path
) -> tuple[GeometryParameters, str]:
    """The geometric stage's parameters: from a decision-parameters file given with --thresholds-from, else
    the checkpoint's, else the defaults."""
    from models.runtime.thresholds import read_decision_parameters
    from models.runtime.voting import GeometryParameters

    if thresholds_from is not None:
        try:
            return read_decision_parameters(thresholds_from).geometry, str(thresholds_from)
        except ValueError:
            logger.info("%s holds no decision parameters; geometry from the checkpoint", thresholds_from)
    if stored is not None:
        return stored.geometry, f"checkpoint {checkpoint}"
    return GeometryParameters(), "defaults"


def _calibrated_parameters(
    report: EvaluationReport, geometry: GeometryParameters
) -> DecisionParameters | None:
    """The decision parameters this run calibrated (None when it applied given thresholds).

    The network thresholds are chosen on the data; the geometry is kept as it was (its inlier bands hold
    across sources), and the inlier distributions reached on the calibration data are recorded with it.
    """
    from models.runtime.thresholds import DecisionParameters, RuleSettings
    from models.runtime.voting import VotingThresholds

    pallet = report.pallet
    if pallet is None or pallet.calibration is None:
        return None
    geometry_figures = (
        {
            "gallery_pallets": report.verified.gallery_sizes[-1].gallery_pallets,
            "inliers": report.verified.gallery_sizes[-1].inliers,
            "rates": report.verified.gallery_sizes[-1].rates,
        }
        if report.verified is not None and report.verified.gallery_sizes
        else None
    )
    return DecisionParameters(
        model_id=report.model_id,
        thresholds=VotingThresholds(
            block_threshold=float(pallet.thresholds["block_threshold"]),
            min_votes=int(pallet.thresholds["min_votes"]),
            score_threshold=float(pallet.thresholds["score_threshold"]),
        ),
        rule=RuleSettings(top_k=pallet.top_k, shortlist_size=pallet.shortlist_size),
        geometry=geometry,
        calibration={
            "dataset": report.dataset,
            **pallet.calibration,
            # The protocol's gallery holds one capture (the receipt) per pallet.
            "gallery_captures_per_pallet": 1,
            "calibration_figures": pallet.at_thresholds,
            **({"geometry_figures": geometry_figures} if geometry_figures is not None else {}),
        },
    )
