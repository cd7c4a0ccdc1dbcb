"""Merge two identities of one pallet and detach an event from a mixed history, through the API on the real
database: what moves, what the histories and the feed show, idempotency, refusals, nothing partial."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from api_testkit import FreshDatabase, block_files, noise_blocks
from fastapi.testclient import TestClient
from sqlalchemy import Connection, create_engine, func, select, text

from app.db.migrations import upgrade_to_head
from app.db.tables import Event, Fingerprint, Pallet
from app.main import create_app
from app.matching.repository import IDENTIFICATION_LOCK_KEY
from app.settings import Settings


def receipt(client: TestClient, blobs: list[bytes], **data: str) -> dict[str, Any]:
    response = client.post("/v1/receipts", files=block_files(blobs), data=data)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def dispatch(client: TestClient, blobs: list[bytes], **data: str) -> dict[str, Any]:
    response = client.post("/v1/dispatches", files=block_files(blobs), data=data)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def two_identities(client: TestClient, seed: int) -> tuple[list[bytes], dict[str, Any], dict[str, Any]]:
    """One pallet registered twice: a second receipt while the first identity is in stock is a new pallet."""
    blobs = noise_blocks(seed, count=3)
    first = receipt(client, blobs, external_ref="ASN-1")
    second = receipt(client, blobs, external_ref="ASN-2")
    assert first["decision"] == second["decision"] == "registered"
    assert first["pallet_id"] != second["pallet_id"]
    return blobs, first, second


def fingerprints_of(connection: Connection, pallet_id: str) -> int:
    return (
        connection.scalar(
            select(func.count()).select_from(Fingerprint).where(Fingerprint.pallet_id == uuid.UUID(pallet_id))
        )
        or 0
    )


def test_merge_moves_history_and_fingerprints_to_the_survivor(
    client: TestClient, connection: Connection
) -> None:
    blobs, survivor, merged = two_identities(client, seed=71)
    into, gone = survivor["pallet_id"], merged["pallet_id"]

    response = client.post(f"/v1/pallets/{gone}/merge", json={"into": into})

    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["pallet_id"], result["into"], result["events_moved"], result["fingerprints_moved"]) == (
        gone,
        into,
        1,
        3,
    )
    old = client.get(f"/v1/pallets/{gone}").json()
    assert (old["status"], old["merged_into"], old["receipts"]) == ("merged", into, 0)
    new = client.get(f"/v1/pallets/{into}").json()
    assert (new["status"], new["merged_into"], new["receipts"]) == ("in_stock", None, 2)
    assert new["external_refs"] == ["ASN-1", "ASN-2"]
    history = client.get(f"/v1/pallets/{into}/events").json()["data"]
    assert [(e["kind"], e["decision"]) for e in history] == [
        ("merge", None),
        ("receipt", "registered"),
        ("receipt", "registered"),
    ]
    assert history[0]["id"] == result["event_id"]
    assert history[0]["related_pallet_id"] == gone and history[0]["actor"] == "anonymous"
    assert client.get(f"/v1/pallets/{gone}/events").json()["data"] == []
    feed = client.get("/v1/events", params={"kind": "merge"}).json()["data"]
    assert [e["id"] for e in feed] == [result["event_id"]]
    assert fingerprints_of(connection, gone) == 0 and fingerprints_of(connection, into) == 6

    # The pallet is identified as the survivor from now on; the merged identity is never a candidate.
    leaving = dispatch(client, blobs)
    assert (leaving["decision"], leaving["pallet_id"]) == ("matched", into)
    assert gone not in {c["pallet_id"] for c in leaving["candidates"]}


def test_merge_is_idempotent(client: TestClient) -> None:
    _, survivor, merged = two_identities(client, seed=72)
    path = f"/v1/pallets/{merged['pallet_id']}/merge"
    body = {"into": survivor["pallet_id"]}
    first = client.post(path, json=body, headers={"Idempotency-Key": "merge-1"})
    retry = client.post(path, json=body, headers={"Idempotency-Key": "merge-1"})
    again = client.post(path, json=body)
    assert first.status_code == retry.status_code == again.status_code == 200
    assert first.json() == retry.json() == again.json()
    other = client.post(path, json={"into": str(uuid.uuid4())}, headers={"Idempotency-Key": "merge-1"})
    assert other.status_code == 409 and other.json()["type"] == "idempotency_conflict"
    merges = client.get("/v1/events", params={"kind": "merge"}).json()["data"]
    assert len(merges) == 1


def test_merge_refuses_cycles_merged_pallets_and_unknown_ones(client: TestClient) -> None:
    _, survivor, merged = two_identities(client, seed=73)
    third = receipt(client, noise_blocks(74, count=2))
    into, gone = survivor["pallet_id"], merged["pallet_id"]

    def merge(pallet: str, target: str) -> tuple[int, str]:
        response = client.post(f"/v1/pallets/{pallet}/merge", json={"into": target})
        return response.status_code, response.json().get("type", "")

    assert merge(into, into) == (409, "merge_cycle")
    assert merge(gone, into)[0] == 200
    assert merge(into, gone) == (409, "merge_cycle")
    assert merge(third["pallet_id"], gone) == (409, "pallet_merged")
    assert merge(gone, third["pallet_id"]) == (409, "pallet_merged")
    assert merge(str(uuid.uuid4()), into) == (404, "pallet_not_found")
    assert merge(into, str(uuid.uuid4())) == (404, "pallet_not_found")
    assert client.post(f"/v1/pallets/{gone}/merge", json={}).status_code == 422

    # A station that still sends the merged identity is told the survivor.
    attached = client.post("/v1/dispatches", files=block_files(noise_blocks(75, 1)), data={"pallet_id": gone})
    assert attached.status_code == 409 and attached.json()["type"] == "pallet_merged"
    assert into in attached.json()["detail"]


def test_a_failed_merge_changes_nothing(client: TestClient, connection: Connection) -> None:
    _, survivor, merged = two_identities(client, seed=76)
    connection.execute(
        text(
            "CREATE FUNCTION refuse_merge_events() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF NEW.kind = 'merge' THEN RAISE EXCEPTION 'refused (test)'; END IF; RETURN NEW; END $$"
        )
    )
    connection.execute(
        text(
            "CREATE TRIGGER refuse_merge_events BEFORE INSERT ON events "
            "FOR EACH ROW EXECUTE FUNCTION refuse_merge_events()"
        )
    )
    response = client.post(f"/v1/pallets/{merged['pallet_id']}/merge", json={"into": survivor["pallet_id"]})
    assert response.status_code == 500
    assert client.get(f"/v1/pallets/{merged['pallet_id']}").json()["status"] == "in_stock"
    assert fingerprints_of(connection, merged["pallet_id"]) == 3
    assert [e["id"] for e in client.get(f"/v1/pallets/{merged['pallet_id']}/events").json()["data"]] == [
        merged["event_id"]
    ]


def test_detach_splits_a_mixed_history(client: TestClient, connection: Connection) -> None:
    own, stranger = noise_blocks(81, count=3), noise_blocks(82, count=3)
    arrived = receipt(client, own)
    pallet = arrived["pallet_id"]
    wrong = dispatch(client, stranger, pallet_id=pallet)  # the station attached the wrong pallet
    assert client.get(f"/v1/pallets/{pallet}").json()["status"] == "dispatched"

    response = client.post(f"/v1/events/{wrong['event_id']}/detach")

    assert response.status_code == 200, response.text
    result = response.json()
    new = result["pallet_id"]
    assert (result["event_id"], result["from_pallet_id"], result["fingerprints_moved"]) == (
        wrong["event_id"],
        pallet,
        3,
    )
    assert client.get(f"/v1/pallets/{pallet}").json()["status"] == "in_stock", "its latest own event"
    assert client.get(f"/v1/pallets/{new}").json()["status"] == "dispatched"
    old_history = client.get(f"/v1/pallets/{pallet}/events").json()["data"]
    new_history = client.get(f"/v1/pallets/{new}/events").json()["data"]
    assert [e["kind"] for e in old_history] == ["detach", "receipt"]
    assert [e["kind"] for e in new_history] == ["detach", "dispatch"]
    assert old_history[0]["related_pallet_id"] == new and new_history[0]["related_pallet_id"] == pallet
    assert old_history[0]["related_event_id"] == new_history[0]["related_event_id"] == wrong["event_id"]
    assert [old_history[0]["id"], new_history[0]["id"]] == result["detach_event_ids"]
    feed = client.get("/v1/events", params={"kind": "detach"}).json()["data"]
    assert [e["id"] for e in feed] == result["detach_event_ids"]
    assert fingerprints_of(connection, pallet) == 3 and fingerprints_of(connection, new) == 3

    # The stranger's blocks now identify the new pallet, the pallet's own blocks the old one.
    assert dispatch(client, stranger)["pallet_id"] == new
    assert dispatch(client, own)["pallet_id"] == pallet


def test_detach_refusals_and_idempotency(client: TestClient, connection: Connection) -> None:
    only = receipt(client, noise_blocks(83, count=2))
    refused = client.post(f"/v1/events/{only['event_id']}/detach")
    assert refused.status_code == 409 and refused.json()["type"] == "detach_conflict"
    assert client.post("/v1/events/999999999/detach").json()["type"] == "event_not_found"

    second = dispatch(client, noise_blocks(84, count=2), pallet_id=only["pallet_id"])
    first = client.post(f"/v1/events/{second['event_id']}/detach", headers={"Idempotency-Key": "split-1"})
    retry = client.post(f"/v1/events/{second['event_id']}/detach", headers={"Idempotency-Key": "split-1"})
    assert first.status_code == retry.status_code == 200 and first.json() == retry.json()
    assert connection.scalar(select(func.count()).select_from(Pallet)) is not None
    detach_event = first.json()["detach_event_ids"][0]
    not_a_recording = client.post(f"/v1/events/{detach_event}/detach")
    assert not_a_recording.status_code == 409 and not_a_recording.json()["type"] == "detach_conflict"
    assert connection.scalar(select(func.count()).select_from(Event).where(Event.kind == "detach")) == 2


def test_a_merge_waits_for_a_recording_in_progress(
    fresh_database: FreshDatabase,
    tiny_checkpoint: Path,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    """A correction takes the identification lock: while a recording holds it, the merge waits."""
    with fresh_database() as url:
        upgrade_to_head(url)
        app = create_app(make_settings(url, tiny_checkpoint, image_store=tmp_path / "images"))
        with TestClient(app) as client:
            _, survivor, merged = two_identities(client, seed=77)
            engine = create_engine(url)
            with engine.connect() as recording, ThreadPoolExecutor(max_workers=1) as pool:
                transaction = recording.begin()
                recording.execute(select(func.pg_advisory_xact_lock(IDENTIFICATION_LOCK_KEY)))
                pending = pool.submit(
                    client.post,
                    f"/v1/pallets/{merged['pallet_id']}/merge",
                    json={"into": survivor["pallet_id"]},
                )
                time.sleep(1.0)
                assert not pending.done(), "the merge must wait for the lock"
                status = recording.execute(
                    select(Pallet.status).where(Pallet.id == uuid.UUID(merged["pallet_id"]))
                ).scalar_one()
                assert status == "in_stock"
                transaction.commit()
                assert pending.result(timeout=30).status_code == 200
            engine.dispose()
            assert client.get(f"/v1/pallets/{merged['pallet_id']}").json()["status"] == "merged"
