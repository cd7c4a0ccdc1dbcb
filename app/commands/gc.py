"""``palletreid gc``: delete expired block images and image files that no event references."""

from __future__ import annotations

import argparse
import logging
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gc",
        help="delete expired block images and stored files no event references",
        description=(
            "With PALLETREID_IMAGE_RETENTION_DAYS (or --retention-days) set, delete the block images of "
            "events recorded longer ago than that (their fingerprints and the events stay; GET "
            "/v1/events/{id}/blocks/{position} answers 404 afterwards). Then delete every file in the "
            "image store (PALLETREID_IMAGE_STORE, default <data dir>/images) that no event references: "
            "left by a crash or a failed commit between writing the file and committing its row. Files are "
            "only deleted under the lock recordings hold, so gc is safe while the service runs. Uses "
            "DATABASE_URL when set, else the embedded PostgreSQL in --data-dir."
        ),
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="only report what would be deleted; delete nothing"
    )
    parser.add_argument(
        "--retention-days",
        type=int,
        default=None,
        help="keep block images this many days (default: PALLETREID_IMAGE_RETENTION_DAYS; unset keeps all)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded PostgreSQL data directory (and default parent of the image store) when no "
        "DATABASE_URL is set (default: ./var)",
    )
    parser.set_defaults(handler=collect)


def collect(args: argparse.Namespace) -> int:
    from app.db.embedded import embedded_postgres
    from app.db.session import build_engine, build_session_factory
    from app.images.service import collect_garbage
    from app.images.store import ImageStore
    from app.settings import Settings

    settings = Settings()
    if args.data_dir is not None:
        settings = settings.model_copy(update={"data_dir": args.data_dir})
    retention = args.retention_days if args.retention_days is not None else settings.image_retention_days
    if retention is not None and retention < 1:
        logger.error("--retention-days must be at least 1, got %d", retention)
        return 2
    store = ImageStore(settings.image_store_path)
    with ExitStack() as stack:
        url = settings.database_url or stack.enter_context(embedded_postgres(settings.data_dir))
        engine = build_engine(url, pool_size=1)
        stack.callback(engine.dispose)
        report = collect_garbage(
            build_session_factory(engine),
            store,
            now=datetime.now(UTC),
            retention_days=retention,
            dry_run=args.dry_run,
        )
    verb = "would delete" if report.dry_run else "deleted"
    print(
        f"{verb}: {report.expired_rows} expired block images "
        f"(retention {f'{retention} days' if retention is not None else 'off'}), "
        f"{report.orphan_files} unreferenced files ({report.orphan_bytes} bytes), "
        f"{report.temporary_files} stale temporary files; store {store.root}"
    )
    return 0
