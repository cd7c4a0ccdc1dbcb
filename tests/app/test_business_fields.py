"""Business facts per receipt/dispatch: validated on the way in, stored with the event, filterable in the
feed, part of the idempotency digest; a pallet's current quality class."""

from __future__ import annotations

from typing import Any

import pytest
from api_testkit import block_files, noise_blocks
from fastapi.testclient import TestClient

from app.db.tables import EventKind, QualityClass
from app.epcis.gs1 import check_digit, grai_digital_link, validate_grai, validate_sscc
from app.errors import InvalidRequestError
from app.matching.service import EventDetails

SSCC = "376123450000012347"
GRAI = "04012345000016ABC123"


def _post(client: TestClient, path: str, seed: int, data: Any, **headers: str) -> Any:
    return client.post(path, files=block_files(noise_blocks(seed=seed, count=3)), data=data, headers=headers)


def _feed(client: TestClient, **params: str) -> list[dict[str, Any]]:
    response = client.get("/v1/events", params={"limit": 200, **params})
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


@pytest.mark.parametrize(
    ("digits", "expected"),
    [("400638133393", 1), ("978030640615", 7)],
)
def test_gs1_check_digit(digits: str, expected: int) -> None:
    # 4006381333931 (a GTIN-13) and 9780306406157 (an ISBN-13) are published valid keys.
    assert check_digit(digits) == expected


def test_gs1_keys_are_refused_with_the_reason() -> None:
    assert validate_sscc(SSCC) == SSCC
    with pytest.raises(ValueError, match="check digit 8, but its first 17 digits give 7"):
        validate_sscc(SSCC[:-1] + "8")
    with pytest.raises(ValueError, match="18 digits"):
        validate_sscc("12345")
    assert validate_grai(GRAI) == GRAI
    with pytest.raises(ValueError, match="check digit"):
        validate_grai("04012345000017ABC123")
    with pytest.raises(ValueError, match="serial"):
        validate_grai("04012345000016")
    assert grai_digital_link("04012345000016A/B") == "https://id.gs1.org/8003/04012345000016A%2FB"


def test_fields_are_stored_returned_and_set_the_pallets_quality_class(client: TestClient) -> None:
    fields = {
        "quality_class": "A",
        "damage_codes": ["broken_board", "EPAL-7"],
        "sscc": SSCC,
        "carrier": "Spedition Nord",
        "grai": GRAI,
        "asset_code": "EPAL:QR:123",
    }
    receipt = _post(client, "/v1/receipts", 1201, fields)
    assert receipt.status_code == 201, receipt.text
    (event,) = [e for e in _feed(client) if e["id"] == receipt.json()["event_id"]]
    assert {name: event[name] for name in fields} == fields
    assert event["damaged"] is True, "damage codes imply damaged"
    pallet_id = receipt.json()["pallet_id"]
    assert client.get(f"/v1/pallets/{pallet_id}").json()["quality_class"] == "A"

    dispatch = _post(client, "/v1/dispatches", 1201, {"quality_class": "B", "damaged": "false"})
    assert dispatch.status_code == 201, dispatch.text
    assert dispatch.json()["pallet_id"] == pallet_id
    assert client.get(f"/v1/pallets/{pallet_id}").json()["quality_class"] == "B"
    unreported = _post(client, "/v1/receipts", 1201, {})
    assert unreported.status_code == 201
    assert client.get(f"/v1/pallets/{pallet_id}").json()["quality_class"] == "B", "kept when not reported"
    (plain,) = [e for e in _feed(client) if e["id"] == unreported.json()["event_id"]]
    assert [plain[name] for name in (*fields, "damaged")] == [None] * 7


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"sscc": SSCC[:-1] + "0"},
            "SSCC 376123450000012340 has check digit 0, but its first 17 digits give 7",
        ),
        ({"sscc": "37612345000001234"}, "sscc"),
        ({"grai": "04012345000017ABC123"}, "GRAI 04012345000017 has check digit 7"),
        ({"quality_class": "premium"}, "quality_class"),
        ({"damage_codes": "broken board"}, "damage_codes"),
        ({"damage_codes": [f"c{i}" for i in range(11)]}, "damage_codes"),
        ({"damaged": "maybe"}, "damaged"),
    ],
)
def test_invalid_fields_are_422_with_a_clear_message(client: TestClient, data: Any, message: str) -> None:
    response = _post(client, "/v1/receipts", 1202, data)
    assert response.status_code == 422, response.text
    assert response.json()["type"] == "validation_error"
    assert message in response.json()["detail"]


def test_damage_codes_contradicting_damaged_false_are_refused(client: TestClient) -> None:
    response = _post(client, "/v1/receipts", 1203, {"damaged": "false", "damage_codes": "broken_board"})
    assert response.status_code == 422
    assert response.json() == {
        "type": "invalid_request",
        "detail": "damage_codes were given with damaged=false",
    }


def test_the_feed_filters_on_every_field(client: TestClient) -> None:
    first = _post(
        client, "/v1/receipts", 1204, {"quality_class": "C", "damage_codes": "nail", "carrier": "X"}
    )
    second = _post(
        client, "/v1/receipts", 1205, {"quality_class": "new", "damaged": "false", "sscc": SSCC, "grai": GRAI}
    )
    third = _post(client, "/v1/receipts", 1206, {"asset_code": "QR-9", "carrier": "Y"})
    ids = {name: r.json()["event_id"] for name, r in (("first", first), ("second", second), ("third", third))}

    def listed(**params: str) -> list[int]:
        return [e["id"] for e in _feed(client, **params) if e["id"] in ids.values()]

    assert listed(quality_class="C") == [ids["first"]]
    assert listed(quality_class="new") == [ids["second"]]
    assert listed(damaged="true") == [ids["first"]]
    assert listed(damaged="false") == [ids["second"]]
    assert listed(damage_code="nail") == [ids["first"]]
    assert listed(sscc=SSCC) == [ids["second"]]
    assert listed(grai=GRAI) == [ids["second"]]
    assert listed(carrier="Y") == [ids["third"]]
    assert listed(asset_code="QR-9") == [ids["third"]]
    assert listed(carrier="X", quality_class="C") == [ids["first"]]
    assert listed(carrier="X", quality_class="new") == []
    bad = client.get("/v1/events", params={"sscc": SSCC[:-1] + "1"})
    assert bad.status_code == 422
    assert "check digit" in bad.json()["detail"]


def test_business_fields_are_part_of_the_idempotency_digest(client: TestClient) -> None:
    first = _post(client, "/v1/receipts", 1207, {"quality_class": "A"}, **{"Idempotency-Key": "biz-1"})
    assert first.status_code == 201
    replay = _post(client, "/v1/receipts", 1207, {"quality_class": "A"}, **{"Idempotency-Key": "biz-1"})
    assert replay.json() == first.json()
    other = _post(client, "/v1/receipts", 1207, {"quality_class": "B"}, **{"Idempotency-Key": "biz-1"})
    assert other.status_code == 409


def test_digests_without_business_fields_did_not_change() -> None:
    """Keys stored before the business fields existed still replay: an unreported field adds nothing."""
    plain = EventDetails(site="HAM").with_idempotency_key("k", EventKind.RECEIPT, [b"img"])
    # Computed with the digest code of revision 0003 (before the business fields).
    assert plain.request_digest == "835b40c19123f342625ebdfe8693bd51eefaa78263de8c83744c442bb1a6ec73"
    graded = EventDetails(site="HAM", quality_class=QualityClass.A).with_idempotency_key(
        "k", EventKind.RECEIPT, [b"img"]
    )
    assert graded.request_digest != plain.request_digest
    with pytest.raises(InvalidRequestError):
        EventDetails(damaged=False, damage_codes=("nail",))
