"""Programmatic Alembic: upgrade/downgrade the schema and tell whether a database is at head."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from app.db.session import normalise_database_url

SCRIPT_LOCATION = "migrations:"
"""The installed ``migrations`` package as a package resource: works from a wheel, not only a checkout."""


def alembic_config(database_url: str | None = None) -> Config:
    """Alembic config for the ``migrations`` package; without ``database_url`` the env falls back to the
    settings."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if database_url is not None:
        config.attributes["database_url"] = normalise_database_url(database_url)
    return config


def upgrade_to_head(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


def downgrade_to_base(database_url: str) -> None:
    command.downgrade(alembic_config(database_url), "base")


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())
