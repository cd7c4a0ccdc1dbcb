"""Test fixtures: a real PostgreSQL with pgvector (migrated once, one rolled-back transaction per test),
a tiny real checkpoint, and the app wired to both.

``DATABASE_URL`` (e.g. the compose ``db`` service) is used when set; otherwise an embedded PostgreSQL
(``pgserver``) is started in a temporary directory for the session. Fixtures are lazy: test modules that do
not ask for a database never start one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.orm import Session

from app.api.deps import get_session
from app.db.migrations import upgrade_to_head
from app.db.session import normalise_database_url, throwaway_database, unit_of_work
from app.main import create_app
from app.settings import Settings
from models.runtime.checkpoint import CheckpointMetadata, save_checkpoint, store_vocabulary
from models.runtime.pcb import build_model
from models.runtime.visual_words import VisualVocabulary

FreshDatabase = Callable[[], AbstractContextManager[str]]
SettingsFactory = Callable[..., Settings]

TINY_IMAGE_SIZE = (32, 64)
"""Input size of the test checkpoint: small, so the API tests stay fast on two CPU cores."""


@pytest.fixture(scope="session")
def database_server_url() -> Iterator[str]:
    """URL of the PostgreSQL server used by the tests (its default database)."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield normalise_database_url(configured)
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="palletreid-pg-") as data_dir:
        server = pgserver.get_server(Path(data_dir) / "pgdata", cleanup_mode="stop")
        yield normalise_database_url(server.get_uri())
        server.cleanup()


@pytest.fixture(scope="session")
def fresh_database(database_server_url: str) -> FreshDatabase:
    """Factory of empty, throw-away databases on the test server (dropped afterwards)."""

    def create() -> AbstractContextManager[str]:
        return throwaway_database(database_server_url, prefix="palletreid_test")

    return create


@pytest.fixture(scope="session")
def database_url(fresh_database: FreshDatabase) -> Iterator[str]:
    """A database migrated to head once for the whole test session."""
    with fresh_database() as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction that is rolled back after the test: tests never see each other."""
    with engine.connect() as connection:
        transaction = connection.begin()
        yield connection
        transaction.rollback()


@pytest.fixture
def session_factory(connection: Connection) -> Callable[[], Session]:
    """Sessions on the test connection; their commits and rollbacks only touch SAVEPOINTs."""

    def factory() -> Session:
        return Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)

    return factory


@pytest.fixture
def session(session_factory: Callable[[], Session]) -> Iterator[Session]:
    with session_factory() as session:
        yield session


@pytest.fixture(scope="session")
def make_settings(tmp_path_factory: pytest.TempPathFactory) -> SettingsFactory:
    """Settings for an app under test. Random-weight fingerprints of different noise images reach ~0.99
    cosine similarity and identical images ~1.0, hence the strict thresholds. Block images are stored in a
    temporary folder, never in the working directory."""
    image_store = tmp_path_factory.mktemp("images")

    def build(database_url: str, model_path: Path, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": database_url,
            "model_path": model_path,
            "model_threads": 1,
            "block_threshold": 0.995,
            "min_votes": 3,
            "score_threshold": 0.995,
            "top_k": 10,
            "image_store": image_store,
            **overrides,
        }
        return Settings.model_validate(values)

    return build


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight PCB (512-dim fingerprints) at a small input size: identical images still match."""
    torch.manual_seed(0)
    model = build_model(
        "resnet18", num_classes=0, num_parts=4, part_dim=128, part_axis="width", last_stride=1, weights=None
    )
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    metadata = CheckpointMetadata.for_model(
        model, image_height=TINY_IMAGE_SIZE[0], image_width=TINY_IMAGE_SIZE[1], training={"purpose": "tests"}
    )
    save_checkpoint(model, path, metadata=metadata)
    return path


@pytest.fixture(scope="module")
def words_checkpoint(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, vocabulary: VisualVocabulary
) -> Path:
    """The tiny test checkpoint with the vocabulary stored beside its weights (same model id). Each test
    module that asks for it defines its own module-scoped ``vocabulary`` fixture."""
    path = tmp_path_factory.mktemp("checkpoint-words") / "tiny-words.safetensors"
    shutil.copyfile(tiny_checkpoint, path)
    store_vocabulary(path, vocabulary)
    return path


@pytest.fixture(scope="session")
def app_client(
    database_url: str, tiny_checkpoint: Path, make_settings: SettingsFactory
) -> Iterator[TestClient]:
    """The app with its lifespan run once (model loaded once) for all API tests."""
    app = create_app(make_settings(database_url, tiny_checkpoint))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


BindToTestConnection = Callable[[TestClient], AbstractContextManager[TestClient]]


@pytest.fixture
def bind_to_test_connection(session_factory: Callable[[], Session]) -> BindToTestConnection:
    """Bind an app's request sessions to this test's rolled-back connection while the context is open."""

    def test_session() -> Iterator[Session]:
        with unit_of_work(session_factory) as session:
            yield session

    @contextmanager
    def bind(client: TestClient) -> Iterator[TestClient]:
        app = client.app
        app.dependency_overrides[get_session] = test_session  # type: ignore[attr-defined]
        try:
            yield client
        finally:
            app.dependency_overrides.clear()  # type: ignore[attr-defined]

    return bind


@pytest.fixture
def client(app_client: TestClient, bind_to_test_connection: BindToTestConnection) -> Iterator[TestClient]:
    """The app, its request sessions bound to this test's rolled-back connection."""
    with bind_to_test_connection(app_client) as client:
        yield client
