"""Database down or restarting: 503 with Retry-After, not ready, and recovery without restarting the service.

Runs its own embedded PostgreSQL (not the shared test server), which the test stops and starts again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pgserver
import pytest
from api_testkit import block_files, noise_blocks
from fastapi.testclient import TestClient

from app.db.migrations import upgrade_to_head
from app.db.session import normalise_database_url
from app.errors import RETRY_AFTER_SECONDS
from app.main import create_app
from app.settings import Settings


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[pgserver.PostgresServer]:
    server = pgserver.get_server(tmp_path / "pgdata", cleanup_mode="stop")
    try:
        yield server
    finally:
        server.cleanup()


def _stop(server: pgserver.PostgresServer) -> None:
    pg_ctl = pgserver.pg_ctl  # type: ignore[attr-defined]  # generated for each bundled binary
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def _assert_unavailable(response: object) -> None:
    assert response.status_code == 503, response.text  # type: ignore[attr-defined]
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)  # type: ignore[attr-defined]
    assert set(response.json()) == {"type", "detail"}  # type: ignore[attr-defined]


def test_requests_get_503_while_the_database_is_down_and_recover_when_it_is_back(
    own_server: pgserver.PostgresServer, tiny_checkpoint: Path, make_settings: Callable[..., Settings]
) -> None:
    url = normalise_database_url(own_server.get_uri())
    upgrade_to_head(url)
    blocks = block_files(noise_blocks(seed=70))
    with TestClient(create_app(make_settings(url, tiny_checkpoint)), raise_server_exceptions=False) as client:
        registered = client.post("/v1/receipts", files=blocks)
        assert registered.status_code == 201, registered.text

        _stop(own_server)
        down = client.post("/v1/dispatches", files=blocks, headers={"Idempotency-Key": "retry-1"})
        _assert_unavailable(down)
        assert down.json()["type"] == "database_unavailable"
        _assert_unavailable(client.get("/v1/events"))
        _assert_unavailable(client.get(f"/v1/pallets/{registered.json()['pallet_id']}"))
        not_ready = client.get("/readyz")
        _assert_unavailable(not_ready)
        assert "database unreachable" in not_ready.json()["detail"]
        assert client.get("/healthz").status_code == 200

        own_server.ensure_postgres_running()  # the same data directory: a restart, not a new database
        assert client.get("/readyz").status_code == 200
        retried = client.post("/v1/dispatches", files=blocks, headers={"Idempotency-Key": "retry-1"})
        assert retried.status_code == 201, retried.text
        assert retried.json()["decision"] == "matched"
        assert retried.json()["pallet_id"] == registered.json()["pallet_id"]
        events = client.get("/v1/events").json()["data"]
        assert [event["kind"] for event in events] == ["receipt", "dispatch"]
