"""Embedded PostgreSQL + pgvector for running without a database server (``pgserver``).

``pgserver`` ships PostgreSQL binaries with pgvector and listens on a Unix socket only. When the process runs
as root it creates and uses a dedicated ``pgserver`` system user for the server (PostgreSQL refuses to run
as root) and widens the permissions of the data directory's parents so that user can reach it.

The server is tuned for its one job on this machine (:func:`tuned_settings`): PostgreSQL's defaults (128 MB
of shared buffers, 64 MB for index builds) would serve a gallery's HNSW index from the OS page cache and
build it far past ``maintenance_work_mem`` (pgvector then warns and builds much slower).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from app.db.session import normalise_database_url

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
CGROUP_MEMORY_LIMIT = Path("/sys/fs/cgroup/memory.max")


def machine_memory_bytes() -> int:
    """RAM this process may use: the machine's, or its container's limit (cgroup v2) when lower."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = CGROUP_MEMORY_LIMIT.read_text().strip()
    except OSError:
        return memory
    return min(memory, int(limit)) if limit.isdigit() else memory


def tuned_settings(memory_bytes: int, cpus: int) -> dict[str, str]:
    """PostgreSQL settings for a server that shares the machine with the service's model.

    A quarter of RAM for shared buffers (the HNSW index is read at random: it should stay in PostgreSQL's
    own cache), the planner told that three quarters are cache in all, an eighth for index builds (an HNSW
    graph built within ``maintenance_work_mem`` is built in memory, several times faster), and every core
    but the leader's for parallel index builds. The model (about 1 GB) and the request threads get the rest.
    """
    memory_mib = memory_bytes // MIB
    return {
        "shared_buffers": f"{max(128, memory_mib // 4)}MB",
        "effective_cache_size": f"{max(512, memory_mib * 3 // 4)}MB",
        "maintenance_work_mem": f"{min(max(64, memory_mib // 8), 16 * 1024)}MB",
        "max_parallel_maintenance_workers": str(max(1, cpus - 1)),
    }


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


def apply_settings(url: str, settings: Mapping[str, str]) -> bool:
    """``ALTER SYSTEM`` the settings that differ and reload; whether some only take effect after a restart."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            changed_contexts = []
            for name, value in settings.items():
                current, unit, context = connection.execute(
                    text("SELECT setting, unit, context FROM pg_settings WHERE name = :name"), {"name": name}
                ).one()
                if current != _in_units(value, unit):
                    # Names come from tuned_settings and values are formatted numbers: nothing to quote.
                    connection.execute(text(f"ALTER SYSTEM SET {name} = '{value}'"))
                    changed_contexts.append(context)
            if changed_contexts:
                connection.execute(text("SELECT pg_reload_conf()"))
            return "postmaster" in changed_contexts
    finally:
        engine.dispose()


def _in_units(value: str, unit: str | None) -> str:
    """``value`` (``"512MB"`` or a plain number) as ``pg_settings.setting`` shows it in ``unit``."""
    if not value.endswith("MB") or unit is None:
        return value
    sizes = {"B": 1, "kB": 1024, "8kB": 8 * 1024, "MB": MIB}
    return str(int(value.removesuffix("MB")) * MIB // sizes[unit])


def _pending_restart(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(
                connection.execute(text("SELECT name FROM pg_settings WHERE pending_restart")).scalars()
            )
    finally:
        engine.dispose()


def server_settings(url: str, names: Iterable[str] | None = None) -> dict[str, str]:
    """``SHOW`` of each tuned setting (what the bench reports about the server it ran on)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {
                name: connection.execute(text(f"SHOW {name}")).scalar_one()
                for name in (names or tuned_settings(machine_memory_bytes(), os.cpu_count() or 1))
            }
    finally:
        engine.dispose()


@contextmanager
def embedded_postgres(data_dir: Path, *, tune: bool = True) -> Iterator[str]:
    """Run the server whose data lives in ``data_dir/pgdata`` while the block runs; yields its URL.

    With ``tune`` the server gets :func:`tuned_settings` for this machine; a first start (or a machine with
    other RAM) restarts it once so that the shared buffers take effect.
    """
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / "pgdata"
    if pgdata.is_dir():
        _forget_dead_handles(pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    if tune:
        settings = tuned_settings(machine_memory_bytes(), os.cpu_count() or 1)
        if apply_settings(normalise_database_url(server.get_uri()), settings):
            server.cleanup()  # stops it unless another process uses it too
            server = pgserver.get_server(pgdata, cleanup_mode="stop")
        pending = _pending_restart(normalise_database_url(server.get_uri()))
        if pending:
            logger.warning(
                "embedded PostgreSQL is shared with another process; %s take effect at its next start",
                ", ".join(pending),
            )
        logger.debug("embedded PostgreSQL tuned: %s", ", ".join(f"{k}={v}" for k, v in settings.items()))
    logger.debug("embedded PostgreSQL running from %s", pgdata)  # serve says it with the schema state
    try:
        yield normalise_database_url(server.get_uri())
    finally:
        server.cleanup()
        logger.info("embedded PostgreSQL stopped")
