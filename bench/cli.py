"""``palletreid bench``: measure embedding throughput, dispatch latency, search quality and growth."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark embedding, dispatch latency, vector search and growth (JSON to stdout)",
        description=(
            "Measure on this machine: (1) block images/s through the service's embedding path vs the bare "
            "network forward; (1b) the geometric stage: ORB extraction per block, matching per block pair "
            "and the whole stage per dispatch; (2) end-to-end HTTP dispatch latency and throughput against "
            "seeded galleries (visual words stored and searched as the service does, unless --no-words); "
            "(3) HNSW recall@k and cost vs exact search, vector vs halfvec, ef_search/m, FAISS; (4) growth "
            "of latency, memory and disk, extrapolated to 1M and 10M pallets. Uses a throw-away database on "
            "DATABASE_URL's server when set, otherwise an embedded PostgreSQL. Prints one JSON document; "
            "logs and progress bars go to stderr. See docs/benchmarks.md."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny preset that proves the harness works in well under a minute",
    )
    parser.add_argument(
        "--sections",
        type=_name_list,
        help="comma-separated subset of embedding,verification,latency,search,growth (default: all)",
    )
    parser.add_argument(
        "--galleries", type=_int_list, help="gallery sizes in pallets (default: 1000,10000,100000)"
    )
    parser.add_argument("--concurrency", type=_int_list, help="dispatches in flight (default: 1,4,16)")
    parser.add_argument(
        "--requests", type=int, help="timed dispatches per gallery and concurrency (default: 64)"
    )
    parser.add_argument("--batch-sizes", type=_int_list, help="embedding batch sizes (default: 1,6,32)")
    parser.add_argument(
        "--embedding-variants",
        type=_name_list,
        help="bare-forward variants among fp32,channels_last,bf16,compile (default: fp32,channels_last,bf16; "
        "compile takes minutes)",
    )
    parser.add_argument(
        "--ef-search",
        type=_int_list,
        help="hnsw.ef_search values of the search sweep, besides the service's (default: 10,20,40,100,200)",
    )
    parser.add_argument(
        "--variant-gallery",
        type=int,
        help="pallets of the vector-vs-halfvec and HNSW m study (default: 10000)",
    )
    parser.add_argument(
        "--hnsw-m",
        type=_int_list,
        help="HNSW m values of that study, over halfvec (default: 8,16,32)",
    )
    parser.add_argument("--no-faiss", action="store_true", help="skip the FAISS comparison")
    parser.add_argument(
        "--faiss-hnsw-max-pallets",
        type=int,
        help="largest gallery that also gets a FAISS HNSW index; flat runs at every size (default: 10000)",
    )
    parser.add_argument("--plots", type=Path, metavar="DIR", help="also write bench-*.png figures to DIR")
    parser.add_argument("--checkpoint", type=Path, help="model checkpoint (default: the shipped one)")
    parser.add_argument(
        "--data-dir", type=Path, help="embedded PostgreSQL data directory (default: a temporary directory)"
    )
    parser.add_argument("--threads", type=int, help="torch threads of the bench and the served model")
    parser.add_argument(
        "--api-processes",
        type=int,
        help="worker processes of the served API in the latency section (default: 1; each gets cores/N "
        "torch threads unless --threads is given)",
    )
    parser.add_argument(
        "--no-words",
        action="store_true",
        help="run without the visual-word stage: the gallery stores no words and the served model has no "
        "vocabulary (default: words when the checkpoint carries a vocabulary)",
    )
    parser.add_argument(
        "--unknown-pallets",
        type=int,
        help="rendered pallets never enrolled, dispatched in the identify breakdown (default: 16)",
    )
    parser.add_argument("--output", type=Path, help="also write the JSON result to this file")
    parser.set_defaults(handler=bench)


def bench(args: argparse.Namespace) -> int:
    from app.errors import ConfigurationError
    from bench.config import preset, with_overrides
    from bench.plots import write_plots
    from bench.runner import run_benchmark
    from models.runtime.checkpoint import CheckpointError

    try:
        config = with_overrides(
            preset(args.quick),
            sections=args.sections,
            galleries=args.galleries,
            concurrency=args.concurrency,
            requests=args.requests,
            embed_batch_sizes=args.batch_sizes,
            embedding_variants=args.embedding_variants,
            ef_search_values=args.ef_search,
            variant_gallery=args.variant_gallery,
            hnsw_m_values=args.hnsw_m,
            faiss=False if args.no_faiss else None,
            faiss_hnsw_max_pallets=args.faiss_hnsw_max_pallets,
            checkpoint=args.checkpoint,
            data_dir=args.data_dir,
            plots_dir=args.plots,
            threads=args.threads,
            api_processes=args.api_processes,
            words=False if args.no_words else None,
            unknown_pallets=args.unknown_pallets,
        )
    except ValueError as error:
        logger.error("%s", error)
        return 2
    try:
        result = run_benchmark(config)
    except (CheckpointError, ConfigurationError) as error:
        logger.error("%s", error)
        return 2
    if config.plots_dir is not None:
        result["plots"] = [str(path) for path in write_plots(result, config.plots_dir)]
    document = json.dumps(result, indent=2)
    if args.output is not None:
        args.output.write_text(document + "\n")
    sys.stdout.write(document + "\n")
    missed = [name for name, target in result["targets"].items() if not target["met"]]
    if missed:
        logger.warning("targets missed: %s", ", ".join(missed))
    return 0
