"""POST /v1/receipts and /v1/dispatches through HTTP, with a real (tiny) model and a real database."""

from __future__ import annotations

import io
import uuid

import pytest
from api_testkit import block_files, noise_blocks
from fastapi.testclient import TestClient
from PIL import Image

from app.matching.service import MatchingService


def test_receipt_registers_unknown_pallet_then_dispatch_matches_it(client: TestClient) -> None:
    blocks = noise_blocks(seed=1)
    receipt = client.post(
        "/v1/receipts",
        files=block_files(blocks),
        data={"external_ref": "ASN-1", "site": "HAM", "gate": "3", "captured_at": "2026-11-27T08:00:00Z"},
    )
    assert receipt.status_code == 201, receipt.text
    registered = receipt.json()
    assert registered["kind"] == "receipt"
    assert registered["decision"] == "registered"
    assert registered["blocks_compared"] == 6
    assert registered["model"].startswith("resnet18-p4x128-")

    dispatch = client.post("/v1/dispatches", files=block_files(blocks), data={"external_ref": "DN-1"})
    assert dispatch.status_code == 201, dispatch.text
    matched = dispatch.json()
    assert matched["decision"] == "matched"
    assert matched["pallet_id"] == registered["pallet_id"]
    assert matched["votes"] == 6
    assert matched["score"] > 0.999
    assert [block["position"] for block in matched["blocks"]] == list(range(6))
    assert all(block["pallet_id"] == registered["pallet_id"] for block in matched["blocks"])
    assert matched["candidates"][0] == {
        "pallet_id": registered["pallet_id"],
        "votes": 6,
        "score": matched["score"],
        "inliers": matched["verification"]["inliers"],
        "confirmed_blocks": 6,
    }
    assert matched["review"] is False
    assert matched["verification"]["band"] == "matched"
    assert matched["verification"]["inliers"] >= 6 * 400, "the same images: nearly every feature agrees"
    assert registered["verification"] == {
        "band": "new",
        "inliers": None,
        "confirmed_blocks": None,
        "runner_up_inliers": None,
        "candidates_checked": 0,
    }
    assert matched["event_id"] > registered["event_id"]

    pallet = client.get(f"/v1/pallets/{registered['pallet_id']}").json()
    assert pallet["status"] == "dispatched"
    assert (pallet["receipts"], pallet["dispatches"]) == (1, 1)
    assert pallet["external_refs"] == ["ASN-1", "DN-1"]
    assert pallet["first_seen"] <= pallet["last_seen"]


def test_returning_pallet_is_matched_and_back_in_stock(client: TestClient) -> None:
    blocks = noise_blocks(seed=2)
    first = client.post("/v1/receipts", files=block_files(blocks)).json()
    client.post("/v1/dispatches", files=block_files(blocks))
    returning = client.post("/v1/receipts", files=block_files(blocks[::-1])).json()
    assert returning["decision"] == "matched"
    assert returning["pallet_id"] == first["pallet_id"]
    assert client.get(f"/v1/pallets/{first['pallet_id']}").json()["status"] == "in_stock"


def test_different_pallet_is_registered_separately(client: TestClient) -> None:
    first = client.post("/v1/dispatches", files=block_files(noise_blocks(seed=3))).json()
    second = client.post("/v1/dispatches", files=block_files(noise_blocks(seed=4))).json()
    assert first["decision"] == second["decision"] == "registered"
    assert first["pallet_id"] != second["pallet_id"]
    assert second["votes"] == 0


def test_receipt_with_pallet_id_attaches_without_identifying(client: TestClient) -> None:
    known = client.post("/v1/dispatches", files=block_files(noise_blocks(seed=5))).json()
    attached = client.post(
        "/v1/receipts",
        files=block_files(noise_blocks(seed=6, count=2)),
        data={"pallet_id": known["pallet_id"]},
    )
    assert attached.status_code == 201, attached.text
    body = attached.json()
    assert (body["decision"], body["pallet_id"], body["score"], body["blocks_compared"]) == (
        "matched",
        known["pallet_id"],
        None,
        0,
    )
    assert client.get(f"/v1/pallets/{known['pallet_id']}").json()["status"] == "in_stock"


def test_receipt_with_unknown_pallet_id_is_404_and_stores_nothing(client: TestClient) -> None:
    response = client.post(
        "/v1/receipts",
        files=block_files(noise_blocks(seed=7, count=1)),
        data={"pallet_id": str(uuid.uuid4())},
    )
    assert response.status_code == 404
    assert response.json()["type"] == "pallet_not_found"
    assert client.get("/v1/events").json()["data"] == []


def test_idempotency_key_replays_the_first_result(client: TestClient) -> None:
    blocks = block_files(noise_blocks(seed=8))
    headers = {"Idempotency-Key": "gate3-0001"}
    first = client.post("/v1/receipts", files=blocks, headers=headers)
    again = client.post("/v1/receipts", files=blocks, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert len(client.get("/v1/events").json()["data"]) == 1
    conflict = client.post("/v1/receipts", files=block_files(noise_blocks(seed=9)), headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["type"] == "idempotency_conflict"


def _encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("payload", "status", "error_type"),
    [
        (b"not an image at all", 415, "unsupported_image_type"),
        (_encoded(Image.new("RGB", (40, 20)), "GIF"), 415, "unsupported_image_type"),
        (_encoded(Image.new("RGB", (40, 20)), "PNG")[:60], 422, "invalid_image"),
        (_encoded(Image.new("RGB", (4000, 3000)), "PNG"), 413, "image_too_large"),
    ],
)
def test_bad_images_are_4xx_json_and_store_nothing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, payload: bytes, status: int, error_type: str
) -> None:
    files = [*block_files(noise_blocks(seed=10, count=1)), ("blocks", ("bad.bin", payload, "image/png"))]
    monkeypatch.setattr(client.app.state.settings, "max_image_pixels", 10_000_000)  # type: ignore[attr-defined]
    response = client.post("/v1/receipts", files=files)
    assert response.status_code == status, response.text
    assert response.json()["type"] == error_type
    assert client.get("/v1/events").json()["data"] == []


def test_oversized_upload_is_413(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client.app.state.settings, "max_image_bytes", 1000)  # type: ignore[attr-defined]
    response = client.post("/v1/receipts", files=block_files(noise_blocks(seed=11, count=1)))
    assert response.status_code == 413
    assert response.json()["type"] == "image_too_large"


@pytest.mark.parametrize("count", [0, 13])
def test_block_count_is_validated(client: TestClient, count: int) -> None:
    files = block_files(noise_blocks(seed=12, count=count)) if count else []
    response = client.post("/v1/receipts", files=files, data={"site": "HAM"})
    assert response.status_code == 422
    assert response.json()["type"] in {"validation_error", "invalid_request"}


def test_validation_errors_use_the_error_shape(client: TestClient) -> None:
    response = client.post(
        "/v1/receipts", files=block_files(noise_blocks(seed=13, count=1)), data={"captured_at": "yesterday"}
    )
    assert response.status_code == 422
    assert response.json()["type"] == "validation_error"
    assert "captured_at" in response.json()["detail"]


def test_failure_after_pallet_insert_leaves_nothing_behind(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = MatchingService._matched_or_new

    def register_then_fail(self: MatchingService, *args: object, **kwargs: object) -> object:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("disk full")

    monkeypatch.setattr(MatchingService, "_matched_or_new", register_then_fail)
    response = client.post("/v1/receipts", files=block_files(noise_blocks(seed=14)))
    assert response.status_code == 500
    assert response.json() == {"type": "internal_error", "detail": "internal server error"}
    monkeypatch.undo()
    assert client.get("/v1/pallets").json()["data"] == []
    assert client.get("/v1/events").json()["data"] == []
