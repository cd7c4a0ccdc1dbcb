"""``palletreid reindex``: fingerprint the stored block images with a new model while the service runs."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reindex",
        help="fingerprint every stored block image with a new model (into its own model id)",
        description=(
            "Read the block images kept with every receipt and dispatch, fingerprint them (and extract their "
            "local features) with the model in --checkpoint and store the results under that model's id, "
            "beside the fingerprints of the model in service, which keeps identifying meanwhile; the new "
            "model may make fingerprints of another size. Its HNSW index is built at the end (concurrently: "
            "the service keeps recording). Block images recorded without their features at a side-view "
            "block's scale (before that was stored) get them from their stored images. "
            "When the checkpoint carries a visual-word vocabulary, the words "
            "of that model's fingerprints that lack them (or hold another vocabulary's) are then computed "
            "from their stored local features, no images needed, and their index built. Resumable: "
            "an interrupted run continues with the events that have no fingerprints of the new model yet. "
            "Afterwards the share of pallets each model covers is printed; switch PALLETREID_MODEL_PATH to "
            "the new checkpoint and restart the service once it covers 100 %%. Events whose images were "
            "deleted by the retention (or recorded before images were kept) cannot be fingerprinted again. "
            "Uses DATABASE_URL when set, else the embedded PostgreSQL in --data-dir."
        ),
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="the new model (.safetensors)")
    parser.add_argument("--batch-size", type=int, default=32, help="events per batch and commit (default 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for inference")
    parser.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded PostgreSQL data directory (and default parent of the image store) when no "
        "DATABASE_URL is set (default: ./var)",
    )
    parser.set_defaults(handler=run)


class ProgressBar:
    """``[#####.....] 120/300 events, 4.1/s, ETA 44 s`` on one line of a terminal; log lines otherwise."""

    def __init__(self, stream: TextIO, width: int = 30, unit: str = "events") -> None:
        self._stream = stream
        self._width = width
        self._unit = unit
        self._started = time.monotonic()
        self._interactive = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = done / elapsed
        share = done / total if total else 1.0
        filled = round(self._width * min(share, 1.0))
        eta = (total - done) / rate if rate > 0 else float("inf")
        line = (
            f"[{'#' * filled}{'.' * (self._width - filled)}] {done}/{total} {self._unit}, "
            f"{rate:.1f}/s, ETA {eta:.0f} s"
        )
        if self._interactive:
            self._stream.write("\r" + line)
            self._stream.flush()
        else:
            logger.info("%s", line)

    def close(self) -> None:
        if self._interactive:
            self._stream.write("\n")


def run(args: argparse.Namespace) -> int:
    from app.db.embedded import embedded_postgres
    from app.db.session import build_engine, build_session_factory
    from app.images.reindex import (
        ReindexRepository,
        WordsReport,
        fill_side_scale_features,
        fill_visual_words,
        reindex,
    )
    from app.images.store import ImageStore
    from app.matching.repository import MAX_INDEXED_DIM, ensure_hnsw_index, ensure_words_index
    from app.model_runner import ModelRunner
    from app.settings import Settings
    from models.runtime.checkpoint import CheckpointError
    from models.runtime.voting import GeometryParameters

    if args.batch_size < 1 or (args.max_batches is not None and args.max_batches < 1):
        logger.error("--batch-size and --max-batches must be at least 1")
        return 2
    settings = Settings()
    if args.data_dir is not None:
        settings = settings.model_copy(update={"data_dir": args.data_dir})
    try:
        runner = ModelRunner.load(
            args.checkpoint,
            device=settings.model_device,
            num_threads=args.threads,
            batch_size=settings.embed_batch_size,
        )
    except CheckpointError as error:
        logger.error("cannot load %s: %s", args.checkpoint, error)
        return 2
    with ExitStack() as stack:
        stack.callback(runner.close)
        if not 1 <= runner.embedding_dim <= MAX_INDEXED_DIM:
            logger.error(
                "model %s makes %d-dim fingerprints; an HNSW index takes at most %d",
                runner.model_id,
                runner.embedding_dim,
                MAX_INDEXED_DIM,
            )
            return 2
        decision = runner.metadata.decision
        geometry = decision.geometry if decision is not None else GeometryParameters()
        url = settings.database_url or stack.enter_context(embedded_postgres(settings.data_dir))
        engine = build_engine(url, pool_size=1)
        stack.callback(engine.dispose)
        factory = build_session_factory(engine)
        bar = ProgressBar(sys.stderr)
        report = reindex(
            factory,
            ImageStore(settings.image_store_path),
            model_id=runner.model_id,
            embed=runner.embed,
            geometry=geometry,
            batch_size=args.batch_size,
            max_batches=args.max_batches,
            progress=bar,
            vocabulary=runner.vocabulary,
        )
        bar.close()
        side_scale_bar = ProgressBar(sys.stderr, unit="events' side-scale features")
        side_scale = fill_side_scale_features(
            factory,
            ImageStore(settings.image_store_path),
            model_id=runner.model_id,
            geometry=geometry,
            batch_size=args.batch_size,
            progress=side_scale_bar,
        )
        side_scale_bar.close()
        # Built after the rows (far faster than growing the graph row by row); concurrently, so the
        # service keeps recording meanwhile.
        dim = runner.embedding_dim
        built = ensure_hnsw_index(engine, runner.model_id, dim)
        words: WordsReport | None = None
        words_built = False
        if runner.vocabulary is not None:
            words_bar = ProgressBar(sys.stderr, unit="fingerprints' words")
            words = fill_visual_words(
                factory, model_id=runner.model_id, vocabulary=runner.vocabulary, progress=words_bar
            )
            words_bar.close()
            words_built = ensure_words_index(engine, runner.model_id, runner.vocabulary)
        with factory() as session:
            coverage = ReindexRepository(session).coverage()
    print(
        f"model {report.model_id}: {report.events_fingerprinted} events fingerprinted "
        f"({report.fingerprints_added} blocks), {report.events_without_images} without their images; "
        f"HNSW index of its {dim}-dim fingerprints {'built' if built else 'in place'}"
    )
    if geometry.side_scale_width:
        print(
            f"side-scale features ({geometry.side_scale_width} px faces): {side_scale.events_filled} events' "
            f"block images filled ({side_scale.fingerprints_filled} blocks), "
            f"{side_scale.events_without_images} without their images"
        )
    if words is not None:
        print(
            f"visual words {words.vocabulary_id}: {words.fingerprints_filled} fingerprints filled from their "
            f"local features, {words.without_features} without local features (no words); "
            f"their HNSW index {'built' if words_built else 'in place'}"
        )
    for item in coverage:
        print(f"  {item.model_id}: {item.pallets} pallets, {100 * item.share:.1f} % covered")
    return 0
