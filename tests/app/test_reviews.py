"""The review queue through the API on the real database: flagged by the decision rule or an operator,
listed with candidates, resolved by merge or keep_new (stored with who and when), admin only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from api_testkit import block_files, noise_blocks
from fastapi.testclient import TestClient
from sqlalchemy import Connection, select

from app.db.tables import Review
from app.main import create_app
from app.settings import Settings

ADMIN_KEY = "review-admin-secret-0123456789"
READER_KEY = "review-reader-secret-0123456789"


def post(client: TestClient, path: str, blobs: list[bytes], **data: str) -> dict[str, Any]:
    response = client.post(path, files=block_files(blobs), data=data)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def flagged_by_the_rule(client: TestClient, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pallet, then one of its blocks alone: strong one-block evidence is registered new and flagged."""
    blobs = noise_blocks(seed, count=6)
    known = post(client, "/v1/receipts", blobs)
    single = post(client, "/v1/dispatches", blobs[:1])
    assert single["decision"] == "registered" and single["review"], single
    return known, single


def open_reviews(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/v1/reviews")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_rule_flagged_event_is_listed_with_candidates_and_merged(
    client: TestClient, connection: Connection
) -> None:
    known, single = flagged_by_the_rule(client, seed=91)
    [review] = open_reviews(client)
    assert (review["event_id"], review["status"], review["kind"], review["pallet_id"]) == (
        single["event_id"],
        "open",
        "dispatch",
        single["pallet_id"],
    )
    assert review["flagged_by"] is None, "flagged by the decision rule"
    assert [c["pallet_id"] for c in review["candidates"]] == [known["pallet_id"]]
    assert review["candidates"][0]["inliers"] > 0 and review["verification"]["band"] == "review"

    response = client.post(
        f"/v1/reviews/{single['event_id']}", json={"action": "merge", "pallet_id": known["pallet_id"]}
    )

    assert response.status_code == 200, response.text
    resolved = response.json()
    assert resolved["status"] == "resolved" and resolved["pallet_id"] == known["pallet_id"]
    resolution = resolved["resolution"]
    assert (resolution["action"], resolution["pallet_id"], resolution["resolved_by"]) == (
        "merge",
        known["pallet_id"],
        "anonymous",
    )
    assert resolution["merge_event_id"] is not None
    merged = client.get(f"/v1/pallets/{single['pallet_id']}").json()
    assert (merged["status"], merged["merged_into"]) == ("merged", known["pallet_id"])
    survivor = client.get(f"/v1/pallets/{known['pallet_id']}").json()
    assert (survivor["receipts"], survivor["dispatches"], survivor["status"]) == (1, 1, "dispatched")
    assert open_reviews(client) == []
    listed = client.get("/v1/reviews", params={"status": "resolved"}).json()["data"]
    assert [item["event_id"] for item in listed] == [single["event_id"]]
    resolved_at, merge_event = connection.execute(
        select(Review.resolved_at, Review.resolution_event_id).where(Review.event_id == single["event_id"])
    ).one()
    assert resolved_at is not None and merge_event == resolution["merge_event_id"]


def test_keep_new_and_repeated_or_conflicting_resolutions(client: TestClient) -> None:
    known, single = flagged_by_the_rule(client, seed=92)
    path = f"/v1/reviews/{single['event_id']}"
    first = client.post(path, json={"action": "keep_new"})
    assert first.status_code == 200 and first.json()["resolution"]["merge_event_id"] is None
    assert client.post(path, json={"action": "keep_new"}).json() == first.json()
    conflict = client.post(path, json={"action": "merge", "pallet_id": known["pallet_id"]})
    assert conflict.status_code == 409 and conflict.json()["type"] == "review_conflict"
    assert client.get(f"/v1/pallets/{single['pallet_id']}").json()["status"] == "dispatched"


def test_operators_flag_any_recording(client: TestClient) -> None:
    blobs = noise_blocks(93, count=3)
    arrived = post(client, "/v1/receipts", blobs)
    left = post(client, "/v1/dispatches", blobs)
    assert left["decision"] == "matched" and not left["review"]
    not_open = client.post(f"/v1/reviews/{left['event_id']}", json={"action": "keep_new"})
    assert not_open.status_code == 409 and not_open.json()["type"] == "review_conflict"

    flagged = client.post(f"/v1/events/{left['event_id']}/flag", json={"reason": "wrong blocks?"})

    assert flagged.status_code == 200, flagged.text
    [review] = open_reviews(client)
    assert (review["event_id"], review["flagged_by"], review["reason"]) == (
        left["event_id"],
        "anonymous",
        "wrong blocks?",
    )
    assert [c["pallet_id"] for c in review["candidates"]] == [arrived["pallet_id"]]
    # Merging an event into the pallet it already belongs to only closes the review.
    done = client.post(
        f"/v1/reviews/{left['event_id']}", json={"action": "merge", "pallet_id": arrived["pallet_id"]}
    ).json()
    assert done["status"] == "resolved" and done["resolution"]["merge_event_id"] is None
    # Flagging again re-opens it, without a body too.
    assert client.post(f"/v1/events/{left['event_id']}/flag").status_code == 200
    assert [item["event_id"] for item in open_reviews(client)] == [left["event_id"]]


def test_bad_requests(client: TestClient) -> None:
    _, single = flagged_by_the_rule(client, seed=94)
    path = f"/v1/reviews/{single['event_id']}"
    assert client.post(path, json={"action": "merge"}).status_code == 422
    assert client.post(path, json={"action": "keep_new", "pallet_id": single["pallet_id"]}).status_code == 422
    assert client.post(path, json={"action": "split"}).status_code == 422
    assert (
        client.post("/v1/reviews/999999999", json={"action": "keep_new"}).json()["type"] == "event_not_found"
    )
    assert client.post("/v1/events/999999999/flag").json()["type"] == "event_not_found"
    assert client.get("/v1/reviews", params={"status": "closed"}).status_code == 422
    merge_event = client.post(
        f"/v1/pallets/{single['pallet_id']}/merge",
        json={"into": client.get("/v1/reviews").json()["data"][0]["candidates"][0]["pallet_id"]},
    ).json()["event_id"]
    refused = client.post(f"/v1/events/{merge_event}/flag")
    assert refused.status_code == 409 and refused.json()["type"] == "review_conflict"


def test_pages(client: TestClient) -> None:
    events = [flagged_by_the_rule(client, seed)[1]["event_id"] for seed in (95, 96, 97)]
    first = client.get("/v1/reviews", params={"limit": 2}).json()
    second = client.get("/v1/reviews", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [item["event_id"] for item in first["data"] + second["data"]] == events
    assert second["next_cursor"] is None


@pytest.fixture(scope="module")
def keyed_app_client(
    database_url: str, tiny_checkpoint: Path, make_settings: Callable[..., Settings]
) -> Iterator[TestClient]:
    settings = make_settings(
        database_url, tiny_checkpoint, api_keys=f"admin:ops:{ADMIN_KEY}, reader:{READER_KEY}"
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def keyed(
    keyed_app_client: TestClient,
    bind_to_test_connection: Callable[[TestClient], AbstractContextManager[TestClient]],
) -> Iterator[TestClient]:
    with bind_to_test_connection(keyed_app_client) as client:
        yield client


def test_corrections_are_for_admins_and_record_the_key_name(keyed: TestClient) -> None:
    admin, reader = {"X-API-Key": ADMIN_KEY}, {"X-API-Key": READER_KEY}
    blobs = noise_blocks(98, count=2)
    first = keyed.post("/v1/receipts", files=block_files(blobs), headers=admin).json()
    second = keyed.post("/v1/receipts", files=block_files(blobs), headers=admin).json()
    merge = f"/v1/pallets/{second['pallet_id']}/merge"
    for method, path in [
        ("GET", "/v1/reviews"),
        ("POST", f"/v1/reviews/{first['event_id']}"),
        ("POST", f"/v1/events/{first['event_id']}/flag"),
        ("POST", f"/v1/events/{first['event_id']}/detach"),
        ("POST", merge),
    ]:
        response = keyed.request(method, path, headers=reader, json={"into": first["pallet_id"]})
        assert response.status_code == 403 and response.json()["type"] == "forbidden", path
        assert keyed.request(method, path).status_code == 401
    merged = keyed.post(merge, json={"into": first["pallet_id"]}, headers=admin)
    assert merged.status_code == 200
    history = keyed.get(f"/v1/pallets/{first['pallet_id']}/events", headers=reader).json()["data"]
    assert (history[0]["kind"], history[0]["actor"]) == ("merge", "ops")
