"""Migrations up and down on a fresh database, and the readiness probe's checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from api_testkit import FreshDatabase
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text

from app.db.base import Base
from app.db.migrations import downgrade_to_base, head_revisions, upgrade_to_head
from app.db.tables import EMBEDDING_DIM, HNSW_INDEX_NAME
from app.main import create_app
from app.settings import Settings

SettingsFactory = Callable[..., Settings]
TABLES = {
    "pallets",
    "events",
    "fingerprints",
    "idempotency_keys",
    "block_images",
    "reviews",
    "webhook_subscriptions",
    "webhook_deliveries",
}


def _schema(url: str) -> tuple[set[str], set[str], int | None]:
    engine = create_engine(url)
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
        extensions = set(connection.execute(text("SELECT extname FROM pg_extension")).scalars())
        dim = connection.execute(
            text(
                "SELECT atttypmod FROM pg_attribute "
                "WHERE attrelid = to_regclass('fingerprints') AND attname = 'embedding'"
            )
        ).scalar_one_or_none()
        indexes = set(connection.execute(text("SELECT indexname FROM pg_indexes")).scalars())
    engine.dispose()
    return tables, extensions | indexes, dim


def test_upgrade_downgrade_upgrade_on_a_fresh_database(fresh_database: FreshDatabase) -> None:
    with fresh_database() as url:
        assert _schema(url)[0] == set()
        upgrade_to_head(url)
        tables, names, dim = _schema(url)
        assert tables == TABLES
        assert {"vector", HNSW_INDEX_NAME} <= names
        assert dim == EMBEDDING_DIM
        downgrade_to_base(url)
        tables, names, dim = _schema(url)
        assert tables == set()
        assert "vector" not in names
        assert dim is None
        upgrade_to_head(url)
        assert _schema(url)[0] == TABLES


def test_ready_with_migrated_database_and_matching_model(
    database_url: str, tiny_checkpoint: Path, make_settings: SettingsFactory
) -> None:
    with TestClient(create_app(make_settings(database_url, tiny_checkpoint))) as client:
        response = client.get("/readyz")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "ready"
        assert body["embedding_dim"] == EMBEDDING_DIM
        assert body["schema_revision"] == sorted(head_revisions())
        assert client.get("/healthz").json() == {"status": "ok"}


def test_not_ready_before_migrations(
    fresh_database: FreshDatabase, tiny_checkpoint: Path, make_settings: SettingsFactory
) -> None:
    with fresh_database() as url, TestClient(create_app(make_settings(url, tiny_checkpoint))) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "migrations head" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_not_ready_when_database_is_unreachable(
    tmp_path: Path, tiny_checkpoint: Path, make_settings: SettingsFactory
) -> None:
    url = f"postgresql+psycopg://postgres:@/postgres?host={tmp_path}"
    with TestClient(create_app(make_settings(url, tiny_checkpoint))) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "database unreachable" in response.json()["detail"]


def test_orm_tables_match_the_migrated_schema(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []
