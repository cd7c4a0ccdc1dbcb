"""Migrations up and down on a fresh database, and the readiness probe's checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from api_testkit import FreshDatabase, insert_receipts, unit_vectors
from fastapi.testclient import TestClient
from pgvector import HalfVector
from sqlalchemy import Connection, create_engine, inspect, text

from app.db.base import Base
from app.db.migrations import alembic_config, downgrade_to_base, head_revisions, upgrade_to_head
from app.main import create_app
from app.matching.repository import HNSW_INDEX_PREFIX, WORDS_INDEX_PREFIX, hnsw_index_name, nearest_query
from app.settings import Settings
from models.runtime.checkpoint import read_metadata

SettingsFactory = Callable[..., Settings]
OLD_HNSW_INDEX = "ix_fingerprints_embedding_hnsw"
"""The one HNSW index over every model's fingerprints before revision 0006."""
TABLES = {
    "pallets",
    "events",
    "fingerprints",
    "block_words",
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
        assert "vector" in names and OLD_HNSW_INDEX not in names
        assert dim == -1, "no dimension: every model stores its own size"
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
        assert body["embedding_dim"] == read_metadata(tiny_checkpoint).embedding_dim == 512
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
        context = MigrationContext.configure(connection, opts={"include_object": _not_a_model_index})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []


def _not_a_model_index(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Per-model HNSW indexes follow the data (built at start and by reindex), not the ORM metadata."""
    return not (
        type_ == "index" and name is not None and name.startswith((HNSW_INDEX_PREFIX, WORDS_INDEX_PREFIX))
    )


def _add_fingerprint(connection: Connection, model_id: str, vector: np.ndarray) -> None:
    """A pallet with one receipt and one fingerprint of ``model_id``, in the columns of revision 0005."""
    pallet, (event,) = insert_receipts(connection, model_id=model_id)
    connection.execute(
        text(
            "INSERT INTO fingerprints (pallet_id, event_id, model_id, position, embedding) "
            "VALUES (:pallet, :event, :model, 0, :embedding)"
        ),
        {"pallet": pallet, "event": event, "model": model_id, "embedding": HalfVector(vector).to_text()},
    )


def _fingerprint_schema(connection: Connection) -> tuple[int, set[str], int]:
    """The embedding column's type modifier, the fingerprints' HNSW indexes, the rows."""
    typmod = connection.execute(
        text(
            "SELECT atttypmod FROM pg_attribute "
            "WHERE attrelid = to_regclass('fingerprints') AND attname = 'embedding'"
        )
    ).scalar_one()
    indexes = set(
        connection.execute(
            text(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'fingerprints' AND indexdef LIKE '%hnsw%'"
            )
        ).scalars()
    )
    rows = connection.execute(text("SELECT count(*) FROM fingerprints")).scalar_one()
    return typmod, indexes, rows


def test_0006_keeps_the_fingerprints_and_indexes_each_model(fresh_database: FreshDatabase) -> None:
    with fresh_database() as url:
        config = alembic_config(url)
        command.upgrade(config, "0005")
        engine = create_engine(url)
        vectors = unit_vectors(seed=5, count=2)
        with engine.begin() as connection:
            _add_fingerprint(connection, "model-a", vectors[0])
            _add_fingerprint(connection, "model-'b' :x %s", vectors[1])  # quoted, and no parameter
            assert _fingerprint_schema(connection) == (512, {OLD_HNSW_INDEX}, 2)

        command.upgrade(config, "0006")

        names = {hnsw_index_name("model-a"), hnsw_index_name("model-'b' :x %s")}
        with engine.begin() as connection:
            assert _fingerprint_schema(connection) == (-1, names, 2)
            connection.execute(text("SET LOCAL enable_seqscan = off"))
            statement = nearest_query(vectors[0], model_id="model-a", limit=1)
            compiled = statement.compile(connection, compile_kwargs={"literal_binds": True})
            plan = "\n".join(connection.execute(text(f"EXPLAIN {compiled}")).scalars())
            assert hnsw_index_name("model-a") in plan
            _add_fingerprint(connection, "model-c", unit_vectors(seed=6, count=1, dim=256)[0])

        with pytest.raises(RuntimeError, match="not 512-dim"):
            command.downgrade(config, "0005")
        with engine.begin() as connection:
            assert _fingerprint_schema(connection) == (-1, names, 3), "nothing changed"
            connection.execute(text("DELETE FROM fingerprints WHERE model_id = 'model-c'"))

        command.downgrade(config, "0005")

        with engine.begin() as connection:
            assert _fingerprint_schema(connection) == (512, {OLD_HNSW_INDEX}, 2)
        engine.dispose()


def test_not_ready_without_the_models_hnsw_index(
    fresh_database: FreshDatabase, tiny_checkpoint: Path, make_settings: SettingsFactory
) -> None:
    with fresh_database() as url:
        upgrade_to_head(url)
        with TestClient(create_app(make_settings(url, tiny_checkpoint))) as client:
            assert client.get("/readyz").status_code == 200, "built at start"
            index = hnsw_index_name(client.get("/readyz").json()["model"])
            engine = create_engine(url)
            with engine.begin() as connection:
                connection.execute(text(f"DROP INDEX {index}"))
            engine.dispose()
            response = client.get("/readyz")
            assert response.status_code == 503
            assert "no valid HNSW index" in response.json()["detail"]


def test_0009_marks_the_events_recorded_from_side_views(fresh_database: FreshDatabase) -> None:
    """Events whose stored result names a detector were recorded from side views; the others, and events
    without a result naming one (corrections), from block images. Downgrading drops both columns."""
    with fresh_database() as url:
        config = alembic_config(url)
        command.upgrade(config, "0008")
        engine = create_engine(url)
        results = ['{"detector": "detector-1"}', '{"detector": null}', "{}"]
        with engine.begin() as connection:
            _, events = insert_receipts(connection, results)

        command.upgrade(config, "0009")

        with engine.begin() as connection:
            rows = connection.execute(text("SELECT id, from_side_views FROM events"))
            marked: dict[int, bool] = {event_id: from_side_views for event_id, from_side_views in rows}
            assert marked == dict(zip(events, (True, False, False), strict=True))
        command.downgrade(config, "0008")
        columns = {column["name"] for column in inspect(engine).get_columns("events")}
        assert "from_side_views" not in columns
        engine.dispose()
