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
    from fastapi import FastAPI

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
    from app.logging_setup import configure_logging
    from app.settings import Settings

    settings = Settings()
    log_level = settings.log_level or args.log_level
    configure_logging(settings.log_format, log_level)  # before Alembic and pgserver are imported

    import uvicorn

    from app.db.embedded import embedded_postgres
    from app.errors import ConfigurationError
    from app.main import create_app
    from app.security import KeyRing, ensure_safe_bind

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
            database = "database from DATABASE_URL"
        else:
            url = stack.enter_context(embedded_postgres(settings.data_dir))
            settings = settings.model_copy(update={"database_url": url})
            database = f"embedded PostgreSQL in {(settings.data_dir / 'pgdata').resolve()}"
        assert settings.database_url is not None
        at_head = _migrate(settings.database_url, database, apply=not args.no_migrate)
        if args.migrate_only:
            return 0 if at_head else 1
        if args.workers == 1:
            uvicorn.run(
                create_app(settings), host=args.host, port=args.port, log_config=None, access_log=False
            )
        else:
            os.environ.update(worker_environment(settings, args.workers, os.cpu_count() or 1))
            os.environ["PALLETREID_LOG_LEVEL"] = log_level
            logger.info("starting %d API processes on one database", args.workers)
            uvicorn.run(
                "app.commands.serve:worker_app",
                factory=True,
                workers=args.workers,
                host=args.host,
                port=args.port,
                log_config=None,
                access_log=False,
            )
    return 0


def _migrate(database_url: str, database: str, *, apply: bool) -> bool:
    """Apply the migrations (when ``apply``) and say in one line where the schema stands; whether at head."""
    from sqlalchemy import create_engine

    from app.db.migrations import current_revisions, head_revisions, upgrade_to_head
    from app.db.session import normalise_database_url

    def current() -> set[str]:
        engine = create_engine(normalise_database_url(database_url))
        try:
            with engine.connect() as connection:
                return current_revisions(connection)
        finally:
            engine.dispose()

    def named(revisions: set[str]) -> str:
        return ", ".join(sorted(revisions)) or "an empty schema"

    before = current()
    if apply:
        upgrade_to_head(database_url)
    after, head = (current(), head_revisions()) if apply else (before, head_revisions())
    if after != head:
        logger.warning(
            "%s: schema at %s, not at head %s (migrations not applied: --no-migrate); run "
            "`palletreid serve --migrate-only`",
            database,
            named(after),
            named(head),
        )
        return False
    if before != after:
        logger.info("%s: schema migrated from %s to %s (head)", database, named(before), named(after))
    else:
        logger.info("%s: schema at %s (head)", database, named(after))
    return True


def worker_app() -> FastAPI:
    """The app of one of several API processes (``--workers``): logging set up as in the parent first."""
    from app.logging_setup import configure_logging
    from app.main import create_app
    from app.settings import Settings

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level or "INFO")
    return create_app(settings)


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
