"""GET endpoints: pallet detail, history, listings and the event feed with keyset pagination."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from api_testkit import block_files, noise_blocks
from fastapi.testclient import TestClient


def _post(client: TestClient, path: str, seed: int, **data: str) -> dict[str, Any]:
    response = client.post(path, files=block_files(noise_blocks(seed=seed, count=3)), data=data)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _all_pages(client: TestClient, path: str, limit: int, **params: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query: dict[str, str | int] = {**params, "limit": limit}
        if cursor is not None:
            query["cursor"] = cursor
        page = client.get(path, params=query)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["data"]) <= limit
        items.extend(body["data"])
        # The event feed always returns a cursor (to resume later); has_more says whether to go on now.
        cursor = body["next_cursor"] if body.get("has_more", True) else None
        if cursor is None:
            return items


def test_unknown_pallet_is_404_json(client: TestClient) -> None:
    for path in (f"/v1/pallets/{uuid.uuid4()}", f"/v1/pallets/{uuid.uuid4()}/events"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["type"] == "pallet_not_found"
    assert client.get("/v1/pallets/not-a-uuid").json()["type"] == "validation_error"


def test_pallet_events_newest_first_across_pages(client: TestClient) -> None:
    registered = _post(client, "/v1/receipts", seed=40, site="HAM")
    for index in range(4):
        kind = "/v1/dispatches" if index % 2 == 0 else "/v1/receipts"
        assert _post(client, kind, seed=40, site="HAM")["pallet_id"] == registered["pallet_id"]
    events = _all_pages(client, f"/v1/pallets/{registered['pallet_id']}/events", limit=2)
    assert len(events) == 5
    assert [event["id"] for event in events] == sorted((event["id"] for event in events), reverse=True)
    assert events[-1]["decision"] == "registered"
    assert events[0]["kind"] == "receipt"
    assert set(events[0]) >= {
        "id", "kind", "decision", "score", "site", "gate", "external_ref", "captured_at", "recorded_at",
    }  # fmt: skip
    pallet = client.get(f"/v1/pallets/{registered['pallet_id']}").json()
    assert (pallet["receipts"], pallet["dispatches"], pallet["status"]) == (3, 2, "in_stock")


def test_pallet_listing_filters_and_pages(client: TestClient) -> None:
    ham = [_post(client, "/v1/receipts", seed=50 + i, site="HAM", external_ref=f"ASN-{i}") for i in range(3)]
    ber = _post(client, "/v1/dispatches", seed=60, site="BER", external_ref="DN-9")

    listed = _all_pages(client, "/v1/pallets", limit=2)
    assert [p["pallet_id"] for p in listed] == [r["pallet_id"] for r in [*ham, ber]]
    assert [p["pallet_id"] for p in _all_pages(client, "/v1/pallets", limit=2, status="in_stock")] == [
        r["pallet_id"] for r in ham
    ]
    assert [p["pallet_id"] for p in _all_pages(client, "/v1/pallets", limit=5, site="BER")] == [
        ber["pallet_id"]
    ]
    by_ref = _all_pages(client, "/v1/pallets", limit=5, external_ref="ASN-1")
    assert [(p["pallet_id"], p["external_refs"]) for p in by_ref] == [(ham[1]["pallet_id"], ["ASN-1"])]
    assert _all_pages(client, "/v1/pallets", limit=5, seen_since="2999-01-01T00:00:00Z") == []
    assert len(_all_pages(client, "/v1/pallets", limit=5, seen_since="2000-01-01T00:00:00Z")) == 4


def test_event_feed_in_recording_order_with_filters(client: TestClient) -> None:
    receipt = _post(client, "/v1/receipts", seed=70)
    dispatch = _post(client, "/v1/dispatches", seed=70)
    other = _post(client, "/v1/receipts", seed=71)
    feed = _all_pages(client, "/v1/events", limit=1)
    assert [event["id"] for event in feed] == [receipt["event_id"], dispatch["event_id"], other["event_id"]]
    assert [event["pallet_id"] for event in feed[:2]] == [receipt["pallet_id"]] * 2
    dispatches = _all_pages(client, "/v1/events", limit=10, kind="dispatch")
    assert [event["id"] for event in dispatches] == [dispatch["event_id"]]
    assert _all_pages(client, "/v1/events", limit=10, since="2999-01-01T00:00:00Z") == []


@pytest.mark.parametrize("cursor", ["garbage!", "WyJ4Il0", "eyJhIjoxfQ"])
def test_malformed_cursor_is_422_json(client: TestClient, cursor: str) -> None:
    for path in ("/v1/pallets", "/v1/events"):
        response = client.get(path, params={"cursor": cursor})
        assert response.status_code == 422, (path, cursor)
        assert response.json()["type"] == "invalid_cursor"


def test_openapi_documents_every_endpoint_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    expected = {
        ("post", "/v1/receipts"),
        ("post", "/v1/dispatches"),
        ("get", "/v1/pallets"),
        ("get", "/v1/pallets/{pallet_id}"),
        ("get", "/v1/pallets/{pallet_id}/events"),
        ("get", "/v1/events"),
        ("get", "/healthz"),
        ("get", "/readyz"),
    }
    documented = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert expected <= documented
    for method, path in expected:
        assert spec["paths"][path][method]["summary"]
    assert spec["components"]["schemas"]["MatchResult"]["examples"]
    assert "404" in spec["paths"]["/v1/pallets/{pallet_id}"]["get"]["responses"]
