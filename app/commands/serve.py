"""``palletreid serve``: migrate the database, load the model and serve the REST API."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.settings import Settings

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the matching REST API",
        description=(
            "Serve the receipt/dispatch matching API. Uses DATABASE_URL (or PALLETREID_DATABASE_URL) "
            "when set, otherwise starts an embedded PostgreSQL with pgvector in --data-dir. Applies "
            "migrations, loads the model (PALLETREID_MODEL_PATH or the shipped checkpoint) and serves "
            "with uvicorn, in --workers processes."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded PostgreSQL data directory when no DATABASE_URL is set (default: ./var)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help=(
            "API processes (uvicorn workers), each with its own copy of the model; they share one database "
            "(the embedded one is started once, by this parent process). Default: 1"
        ),
    )
    parser.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply migrations at start (they are applied by default)",
    )
    parser.add_argument(
        "--migrate-only",
        action="store_true",
        help="apply the migrations and exit (a one-shot job before API replicas start with --no-migrate)",
    )
    parser.set_defaults(handler=serve)


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.db.embedded import embedded_postgres
    from app.db.migrations import upgrade_to_head
    from app.errors import ConfigurationError
    from app.main import create_app
    from app.security import KeyRing, ensure_safe_bind
    from app.settings import Settings

    settings = Settings()
    if args.data_dir is not None:
        settings = settings.model_copy(update={"data_dir": args.data_dir})
    try:
        ensure_safe_bind(args.host, KeyRing.from_settings(settings))
    except ConfigurationError as error:
        logger.error("%s", error)
        return 2
    if not args.migrate_only:
        # uvicorn re-raises the SIGTERM it handled after shutting down; turn it into SystemExit so the
        # embedded database below is stopped instead of the process dying on the spot.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with ExitStack() as stack:
        if settings.database_url:
            logger.info("using the database from DATABASE_URL")
        else:
            url = stack.enter_context(embedded_postgres(settings.data_dir))
            settings = settings.model_copy(update={"database_url": url})
        assert settings.database_url is not None
        if not args.no_migrate:
            upgrade_to_head(settings.database_url)
            logger.info("database migrated to head")
        if args.migrate_only:
            return 0
        if args.workers == 1:
            uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None)
        else:
            os.environ.update(worker_environment(settings, args.workers, os.cpu_count() or 1))
            logger.info("starting %d API processes on one database", args.workers)
            uvicorn.run(
                "app.main:create_app",
                factory=True,
                workers=args.workers,
                host=args.host,
                port=args.port,
                log_config=None,
            )
    return 0


def worker_environment(settings: Settings, workers: int, cpus: int) -> dict[str, str]:
    """What the worker processes need in their environment: each builds its settings from it.

    The database URL (also the embedded server's), the data directory and, unless set, torch threads
    split between the workers so that N models do not each spread over every core.
    """
    assert settings.database_url is not None
    environment = {
        "PALLETREID_DATABASE_URL": settings.database_url,
        "PALLETREID_DATA_DIR": str(settings.data_dir),
    }
    if settings.model_threads is None:
        environment["PALLETREID_MODEL_THREADS"] = str(max(1, cpus // workers))
    return environment
