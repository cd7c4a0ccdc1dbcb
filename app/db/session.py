"""Engine and session factory; the unit of work commits once per request (see ``app.api.deps``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def normalise_database_url(url: str) -> str:
    """Use the psycopg 3 driver for plain ``postgres://`` / ``postgresql://`` URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def build_engine(url: str, *, pool_size: int = 5) -> Engine:
    return create_engine(normalise_database_url(url), pool_size=pool_size, pool_pre_ping=True)


def build_session_factory(bind: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=bind, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: Callable[[], Session]) -> Iterator[Session]:
    """A session that commits once if the block succeeds and rolls back otherwise."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def throwaway_database(server_url: str, *, prefix: str) -> Iterator[str]:
    """A new, empty database ``<prefix>_<random>`` on the server of ``server_url``, dropped afterwards.

    For test and benchmark runs: they never touch an existing database (the role needs CREATEDB).
    """
    admin_url = normalise_database_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
