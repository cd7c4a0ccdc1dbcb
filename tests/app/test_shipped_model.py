"""The README's tour with the shipped model and its calibrated thresholds, on the sample captures in
docs/samples: a receipt, then a dispatch of new captures (another camera) of the same pallet is matched to
it, and a pallet never seen before is registered as a new one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_testkit import FreshDatabase
from fastapi.testclient import TestClient

from app.db.migrations import upgrade_to_head
from app.main import create_app
from app.settings import Settings

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"


@pytest.fixture(scope="module")
def shipped_client(fresh_database: FreshDatabase) -> Iterator[TestClient]:
    """The app with nothing configured but the database: shipped checkpoint, shipped thresholds."""
    with fresh_database() as url:
        upgrade_to_head(url)
        app = create_app(Settings(database_url=url, model_threads=1))
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client


def _post(client: TestClient, endpoint: str, folder: Path, **fields: str) -> dict[str, Any]:
    files = [
        ("blocks", (path.name, path.read_bytes(), "image/jpeg")) for path in sorted(folder.glob("block*.jpg"))
    ]
    assert len(files) == 6
    response = client.post(f"/v1/{endpoint}", files=files, data=fields)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_readme_tour_matches_the_same_pallet_and_registers_a_new_one(shipped_client: TestClient) -> None:
    receipt = _post(shipped_client, "receipts", SAMPLES / "pallet-a" / "receipt", site="DE-HAM-01")
    assert receipt["decision"] == "registered"

    dispatch = _post(shipped_client, "dispatches", SAMPLES / "pallet-a" / "dispatch", site="DE-HAM-01")
    assert dispatch["decision"] == "matched"
    assert dispatch["pallet_id"] == receipt["pallet_id"]

    stranger = _post(shipped_client, "dispatches", SAMPLES / "pallet-b" / "dispatch")
    assert stranger["decision"] == "registered"
    assert stranger["pallet_id"] != receipt["pallet_id"]

    history = shipped_client.get(f"/v1/pallets/{receipt['pallet_id']}/events").json()
    assert [event["kind"] for event in history["data"]] == ["dispatch", "receipt"]
    pallet = shipped_client.get(f"/v1/pallets/{receipt['pallet_id']}").json()
    assert (pallet["status"], pallet["receipts"], pallet["dispatches"]) == ("dispatched", 1, 1)
