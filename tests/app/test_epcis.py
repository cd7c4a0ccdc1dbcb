"""GET /v1/epcis/events: receipts and dispatches as EPCIS 2.0 ObjectEvents; every document returned is
validated against the project's EPCIS 2.0 JSON Schema (app/epcis/epcis-query-document.schema.json)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import jsonschema
import pytest
from api_testkit import block_files, noise_blocks
from fastapi.testclient import TestClient

from app.db.tables import Event
from app.epcis.router import query_document_schema
from app.epcis.service import EpcisNames, biz_step_kinds

GRAI = "04012345000016ABC123"
GRAI_LINK = "https://id.gs1.org/8003/04012345000016ABC123"
NAMES = EpcisNames(epc_base_uri="urn:palletreid:pallet:", epcis_base_uri="urn:palletreid:")
VALIDATOR = jsonschema.Draft202012Validator(query_document_schema())


def _post(client: TestClient, path: str, seed: int, **data: Any) -> dict[str, Any]:
    response = client.post(path, files=block_files(noise_blocks(seed=seed, count=3)), data=data)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _query(client: TestClient, **params: Any) -> tuple[dict[str, Any], Any]:
    response = client.get("/v1/epcis/events", params={"perPage": 200, **params})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/ld+json"
    assert response.headers["GS1-EPCIS-Version"] == "2.0.0"
    document: dict[str, Any] = response.json()
    VALIDATOR.validate(document)
    return document, response


def _events(client: TestClient, ids: set[int], **params: Any) -> list[dict[str, Any]]:
    document, _ = _query(client, **params)
    events: list[dict[str, Any]] = document["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    return [event for event in events if event["palletreid:eventId"] in ids]


def test_a_receipt_and_a_dispatch_as_object_events(client: TestClient) -> None:
    receipt = _post(
        client,
        "/v1/receipts",
        1301,
        site="DE-HAM-01",
        gate="dock 3",
        external_ref="ASN-1/7",
        captured_at="2026-11-27T08:15:00+01:00",
        quality_class="A",
        sscc="376123450000012347",
    )
    dispatch = _post(client, "/v1/dispatches", 1301, site="DE-HAM-01", damage_codes="nail", carrier="Nord")
    assert dispatch["pallet_id"] == receipt["pallet_id"]
    document, _ = _query(client)
    assert document["@context"][0] == "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
    assert document["type"] == "EPCISQueryDocument"
    first, second = _events(client, {receipt["event_id"], dispatch["event_id"]})

    pallet_uri = f"urn:palletreid:pallet:{receipt['pallet_id']}"
    assert first["epcList"] == [pallet_uri]
    assert (first["action"], first["bizStep"], first["disposition"]) == ("ADD", "receiving", "in_progress")
    assert first["eventTime"] == "2026-11-27T07:15:00.000Z"
    assert first["eventTimeZoneOffset"] == "+00:00"
    assert first["readPoint"] == {"id": "urn:palletreid:loc:DE-HAM-01:gate:dock%203"}
    assert first["bizLocation"] == {"id": "urn:palletreid:loc:DE-HAM-01"}
    assert first["bizTransactionList"] == [{"bizTransaction": "urn:palletreid:bt:ASN-1%2F7"}]
    assert first["eventID"] == f"urn:palletreid:event:{receipt['event_id']}"
    assert first["palletreid:decision"] == "registered"
    assert first["palletreid:qualityClass"] == "A"
    assert first["palletreid:sscc"] == "376123450000012347"
    assert "persistentDisposition" not in first

    assert (second["action"], second["bizStep"], second["disposition"]) == (
        "OBSERVE",
        "shipping",
        "in_transit",
    )
    assert second["epcList"] == [pallet_uri]
    assert second["persistentDisposition"] == {"set": ["damaged"]}
    assert second["palletreid:damageCodes"] == ["nail"]
    assert second["palletreid:carrier"] == "Nord"
    assert second["palletreid:decision"] == "matched"
    assert second["palletreid:score"] == pytest.approx(dispatch["score"])
    assert second["palletreid:review"] is False
    assert "readPoint" not in second and "bizTransactionList" not in second


def test_query_parameters_filter_like_epcis(client: TestClient) -> None:
    early = _post(client, "/v1/receipts", 1302, site="HAM", captured_at="2026-01-01T10:00:00Z")
    late = _post(client, "/v1/dispatches", 1303, site="BER", captured_at="2026-02-01T10:00:00Z", grai=GRAI)
    other = _post(client, "/v1/receipts", 1304, site="BER", captured_at="2026-03-01T10:00:00Z")
    ids = {early["event_id"], late["event_id"], other["event_id"]}

    def listed(**params: str) -> list[int]:
        return [event["palletreid:eventId"] for event in _events(client, ids, **params)]

    assert listed() == [early["event_id"], late["event_id"], other["event_id"]]
    assert listed(GE_eventTime="2026-02-01T10:00:00Z") == [late["event_id"], other["event_id"]]
    assert listed(LT_eventTime="2026-02-01T10:00:00Z") == [early["event_id"]]
    assert listed(EQ_bizStep="shipping") == [late["event_id"]]
    assert listed(EQ_bizStep="https://ref.gs1.org/cbv/BizStep-receiving") == [
        early["event_id"],
        other["event_id"],
    ]
    assert listed(EQ_bizStep="commissioning") == []
    assert listed(EQ_bizLocation="urn:palletreid:loc:BER") == [late["event_id"], other["event_id"]]
    assert listed(EQ_bizLocation="urn:palletreid:loc:HAM,urn:palletreid:loc:BER") == sorted(ids)
    assert listed(EQ_bizLocation="urn:elsewhere:loc:HAM") == []

    (with_grai,) = _events(client, {late["event_id"]})
    assert with_grai["epcList"] == [GRAI_LINK], "a pallet with a GRAI is named by its Digital Link"
    assert listed(MATCH_epc=GRAI_LINK) == [late["event_id"]]
    assert listed(MATCH_epc=f"urn:palletreid:pallet:{early['pallet_id']}") == [early["event_id"]]
    assert listed(MATCH_epc=f"urn:palletreid:pallet:{uuid.uuid4()},{GRAI_LINK}") == [late["event_id"]]
    assert listed(MATCH_epc="urn:palletreid:pallet:not-a-uuid") == []


def test_pages_follow_the_link_header(client: TestClient) -> None:
    created = [_post(client, "/v1/receipts", 1310 + index)["event_id"] for index in range(3)]
    start = min(created)
    seen: list[int] = []
    document, response = _query(client, perPage=2, GE_eventTime="2000-01-01T00:00:00Z")
    pages = 1
    while True:
        seen.extend(
            e["palletreid:eventId"] for e in document["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
        )
        link = response.headers.get("Link")
        if link is None:
            break
        url, rel = link.split(";")
        assert rel.strip() == 'rel="next"'
        token = dict(item.split("=", 1) for item in url.strip("<> ").split("?", 1)[1].split("&"))[
            "nextPageToken"
        ]
        document, response = _query(
            client, perPage=2, GE_eventTime="2000-01-01T00:00:00Z", nextPageToken=token
        )
        pages += 1
    assert [event_id for event_id in seen if event_id >= start] == created
    assert pages >= 2
    bad = client.get("/v1/epcis/events", params={"nextPageToken": "garbage!"})
    assert bad.status_code == 422 and bad.json()["type"] == "invalid_cursor"


def test_the_schema_refuses_what_epcis_does_not_allow(client: TestClient) -> None:
    """The validation can fail: documents with EPCIS mistakes are refused by the project's schema."""
    _post(client, "/v1/receipts", 1320, site="HAM", gate="g1")
    document, _ = _query(client)
    assert VALIDATOR.is_valid(document)
    mistakes = {
        "unknown action": lambda event: event.update(action="MOVE"),
        "no time zone offset": lambda event: event.pop("eventTimeZoneOffset"),
        "offset out of range": lambda event: event.update(eventTimeZoneOffset="+15:00"),
        "misspelt field": lambda event: event.update(bizstep="receiving"),
        "epc not a URI": lambda event: event.update(epcList=["pallet 42"]),
        "location without id": lambda event: event.update(readPoint={"name": "g1"}),
    }
    for name, mistake in mistakes.items():
        broken = copy.deepcopy(document)
        mistake(broken["epcisBody"]["queryResults"]["resultsBody"]["eventList"][-1])
        assert not VALIDATOR.is_valid(broken), name
    assert not VALIDATOR.is_valid({**document, "schemaVersion": "1.2"})


def test_names_read_back_what_they_write() -> None:
    event = Event(pallet_id=uuid.uuid4(), grai=None)
    assert NAMES.epc_of(NAMES.pallet(event)) == event.pallet_id
    assert NAMES.epc_of(GRAI_LINK) == GRAI
    assert NAMES.epc_of("https://id.gs1.org/8003/04012345000017ABC123") is None, "wrong check digit"
    assert NAMES.site_of(NAMES.site("DE HAM:1")) == "DE HAM:1"
    assert NAMES.site_of(NAMES.gate("HAM", "g1")) is None, "a gate is not a site"
    custom = EpcisNames(
        epc_base_uri="https://wms.example.com/pallet/", epcis_base_uri="https://wms.example.com/"
    )
    assert custom.pallet(event) == f"https://wms.example.com/pallet/{event.pallet_id}"
    assert biz_step_kinds(["urn:epcglobal:cbv:bizstep:shipping", "receiving"]) == biz_step_kinds(
        ["shipping", "receiving"]
    )


def test_a_merge_is_declared_as_an_error_with_corrective_events(client: TestClient) -> None:
    survivor = _post(client, "/v1/receipts", 1330, site="HAM")
    twin = _post(client, "/v1/receipts", 1331, site="HAM", gate="g2")
    twin_dispatch = _post(client, "/v1/dispatches", 1331, site="HAM")
    assert twin_dispatch["pallet_id"] == twin["pallet_id"]
    merge = client.post(f"/v1/pallets/{twin['pallet_id']}/merge", json={"into": survivor["pallet_id"]})
    assert merge.status_code == 200, merge.text
    merge_id = merge.json()["event_id"]
    document, _ = _query(client)
    events = document["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    mine = [e for e in events if e["palletreid:eventId"] in {twin["event_id"], twin_dispatch["event_id"]}]
    twin_uri = f"urn:palletreid:pallet:{twin['pallet_id']}"
    survivor_uri = f"urn:palletreid:pallet:{survivor['pallet_id']}"
    # As first published, then declared wrong and corrected, in the order of the merge.
    assert [(e["epcList"], "errorDeclaration" in e) for e in mine] == [
        ([twin_uri], False),
        ([twin_uri], False),
        ([twin_uri], True),
        ([survivor_uri], False),
        ([twin_uri], True),
        ([survivor_uri], False),
    ]
    declared, corrective = mine[2], mine[3]
    assert declared["eventID"] == mine[0]["eventID"], "the declaration repeats the wrong event's id"
    assert declared["errorDeclaration"]["reason"] == "incorrect_data"
    assert declared["errorDeclaration"]["correctiveEventIDs"] == [corrective["eventID"]]
    assert declared["errorDeclaration"]["palletreid:correctionEventId"] == merge_id
    assert (corrective["action"], corrective["bizStep"]) == ("OBSERVE", "receiving")
    assert corrective["readPoint"] == mine[0]["readPoint"]
    assert corrective["palletreid:corrects"] == mine[0]["eventID"]
    assert _events(client, {twin["event_id"]}, MATCH_epc=survivor_uri) == [corrective]
    assert len(_events(client, {twin["event_id"]}, MATCH_epc=twin_uri)) == 2, "published and declared"


def test_a_detach_is_declared_for_the_moved_event_only(client: TestClient) -> None:
    receipt = _post(client, "/v1/receipts", 1340, site="HAM")
    dispatch = _post(client, "/v1/dispatches", 1340, site="HAM")
    detach = client.post(f"/v1/events/{dispatch['event_id']}/detach")
    assert detach.status_code == 200, detach.text
    new_pallet = detach.json()["pallet_id"]
    mine = _events(client, {receipt["event_id"], dispatch["event_id"]})
    assert [("errorDeclaration" in e, e["epcList"][0].rsplit(":", 1)[1]) for e in mine] == [
        (False, receipt["pallet_id"]),
        (False, receipt["pallet_id"]),
        (True, receipt["pallet_id"]),
        (False, new_pallet),
    ]
    assert mine[2]["palletreid:eventId"] == dispatch["event_id"]
    assert _events(client, {receipt["event_id"]}, EQ_bizStep="receiving") == [mine[0]]
