"""Embedded PostgreSQL + pgvector for running without a database server (``pgserver``).

``pgserver`` ships PostgreSQL binaries with pgvector and listens on a Unix socket only. When the process runs
as root it creates and uses a dedicated ``pgserver`` system user for the server (PostgreSQL refuses to run
as root) and widens the permissions of the data directory's parents so that user can reach it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.db.session import normalise_database_url

logger = logging.getLogger(__name__)


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop pids of crashed processes from pgserver's handle list.

    pgserver stops the server when its last handle (process) exits; a process killed without running its
    exit hooks stays listed forever and the server would then never be stopped by anyone.
    """
    from pgserver.utils import DiskList, process_is_running

    handles = DiskList(pgdata / ".handle_pids.json")
    listed = handles.get()
    alive = [pid for pid in listed if process_is_running(pid)]
    if alive != listed:
        handles.put(alive)


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Run the server whose data lives in ``data_dir/pgdata`` while the block runs; yields its URL."""
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / "pgdata"
    if pgdata.is_dir():
        _forget_dead_handles(pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    logger.info("embedded PostgreSQL running from %s", pgdata)
    try:
        yield normalise_database_url(server.get_uri())
    finally:
        server.cleanup()
        logger.info("embedded PostgreSQL stopped")
