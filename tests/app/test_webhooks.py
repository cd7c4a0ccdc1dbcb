"""Webhooks: admin CRUD, the outbox written with the event (or not at all), and delivery to a local receiver
that fails, times out and recovers: every event arrives, in order per pallet, signed, duplicates only where
a timed-out attempt had reached the receiver (the event id header lets it drop them)."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from api_testkit import block_analysis, block_files, noise_blocks
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from app.db.migrations import upgrade_to_head
from app.db.session import build_session_factory, unit_of_work
from app.db.tables import DeliveryStatus, EventKind, WebhookDelivery
from app.main import create_app
from app.matching.repository import FingerprintRepository
from app.matching.service import EventDetails, MatchingConfig, MatchingService
from app.settings import Settings
from app.webhooks.dispatcher import DeliveryPolicy, WebhookDispatcher, WebhookWorker
from app.webhooks.schemas import SubscriptionIn
from app.webhooks.service import WebhookService
from app.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from models.runtime.voting import VotingThresholds

SECRET = "receiver-shared-secret-0123456789"
CONFIG = MatchingConfig(
    thresholds=VotingThresholds(block_threshold=0.8, min_votes=2, score_threshold=0.3),
    top_k=10,
    shortlist_size=10,
    captures_per_pallet=3,
    ef_search=40,
    words_ef_search=40,
    max_candidates=5,
)


def _deliveries(session: Session) -> list[WebhookDelivery]:
    return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def test_subscriptions_crud(client: TestClient) -> None:
    created = client.post("/v1/webhooks", json={"url": "https://wms.example.com/hooks", "sites": ["HAM"]})
    assert created.status_code == 201, created.text
    subscription = created.json()
    assert len(subscription["secret"]) >= 32, "a secret is generated when none is given"
    assert (subscription["pending"], subscription["dead"], subscription["event_kinds"]) == (0, 0, None)
    path = f"/v1/webhooks/{subscription['id']}"
    listed = client.get("/v1/webhooks").json()
    assert [item["id"] for item in listed] == [subscription["id"]]
    assert "secret" not in listed[0] and "secret" not in client.get(path).json()

    patched = client.patch(path, json={"active": False, "event_kinds": ["dispatch"], "sites": None})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["active"], patched.json()["event_kinds"], patched.json()["sites"]) == (
        False,
        ["dispatch"],
        None,
    )
    assert client.delete(path).status_code == 204
    assert client.get(path).json()["type"] == "subscription_not_found"
    assert client.delete(path).status_code == 404
    bad = client.post("/v1/webhooks", json={"url": "ftp://example.com/x"})
    assert bad.status_code == 422 and bad.json()["type"] == "validation_error"
    short = client.post("/v1/webhooks", json={"url": "https://example.com/x", "secret": "short"})
    assert short.status_code == 422


def test_the_outbox_row_is_written_with_the_event_for_matching_subscriptions(
    client: TestClient, session: Session
) -> None:
    client.post(
        "/v1/webhooks", json={"url": "https://a.example.com/", "event_kinds": ["dispatch"], "sites": ["HAM"]}
    )
    every = client.post("/v1/webhooks", json={"url": "https://b.example.com/"}).json()
    paused = client.post("/v1/webhooks", json={"url": "https://c.example.com/", "active": False}).json()

    receipt = client.post(
        "/v1/receipts", files=block_files(noise_blocks(1401, 3)), data={"site": "HAM"}
    ).json()
    dispatch = client.post(
        "/v1/dispatches", files=block_files(noise_blocks(1401, 3)), data={"site": "HAM"}
    ).json()
    elsewhere = client.post("/v1/dispatches", files=block_files(noise_blocks(1402, 3))).json()
    by_event: dict[int, int] = {}
    for delivery in _deliveries(session):
        assert delivery.status == DeliveryStatus.PENDING.value
        assert str(delivery.subscription_id) != paused["id"]
        by_event[delivery.event_id] = by_event.get(delivery.event_id, 0) + 1
    assert by_event == {receipt["event_id"]: 1, dispatch["event_id"]: 2, elsewhere["event_id"]: 1}
    assert client.get(f"/v1/webhooks/{every['id']}").json()["pending"] == 3


def test_corrections_are_delivered_too(client: TestClient, session: Session) -> None:
    client.post("/v1/webhooks", json={"url": "https://b.example.com/"})
    kept = client.post("/v1/receipts", files=block_files(noise_blocks(1404, 3))).json()
    twin = client.post("/v1/receipts", files=block_files(noise_blocks(1405, 3))).json()
    merge = client.post(f"/v1/pallets/{twin['pallet_id']}/merge", json={"into": kept["pallet_id"]}).json()
    assert [d.event_id for d in _deliveries(session)] == [
        kept["event_id"],
        twin["event_id"],
        merge["event_id"],
    ]


def test_a_recording_that_fails_after_the_outbox_write_leaves_no_delivery(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.post("/v1/webhooks", json={"url": "https://b.example.com/"})

    def fail(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(FingerprintRepository, "add_all", fail)
    response = client.post("/v1/receipts", files=block_files(noise_blocks(1403, 3)))
    assert response.status_code == 500
    assert _deliveries(session) == []


class Receiver:
    """A local HTTP receiver answering each request by a script: ``fail`` (500), ``timeout`` (answers
    after the sender gave up), ``ok`` (200, also once the script is exhausted)."""

    def __init__(self, script: list[str], *, slow_seconds: float) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, Message, bytes]] = []
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    action = receiver.script.pop(0) if receiver.script else "ok"
                    receiver.requests.append((action, self.headers, body))  # names case-insensitive
                if action == "timeout":
                    time.sleep(slow_seconds)
                try:
                    self.send_response(500 if action == "fail" else 200)
                    self.end_headers()
                except OSError:
                    pass  # the sender stopped waiting

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[dict[str, Any]]:
        """Bodies the receiver processed (200 or answered too late), in arrival order."""
        return [json.loads(body) for action, _, body in self.requests if action != "fail"]


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.fixture
def committed_database(fresh_database: Callable[..., Any]) -> Iterator[Engine]:
    """A fresh, migrated database whose commits are real (the worker reads them)."""
    with fresh_database() as url:
        upgrade_to_head(url)
        engine = create_engine(url, pool_size=4)
        yield engine
        engine.dispose()


def test_every_event_is_delivered_in_order_through_failures_timeouts_and_a_dead_letter(
    committed_database: Engine,
) -> None:
    engine = committed_database
    factory = build_session_factory(engine)
    script = ["fail", "timeout", "ok", "ok", "fail", "fail", "fail"]
    with Receiver(script, slow_seconds=1.0) as receiver:
        with unit_of_work(factory) as session:
            subscription = WebhookService(session).create(SubscriptionIn(url=receiver.url, secret=SECRET))
        recorded = []
        for kind, seed in [
            (EventKind.RECEIPT, 1410),
            (EventKind.RECEIPT, 1411),
            (EventKind.DISPATCH, 1410),
            (EventKind.DISPATCH, 1411),
        ]:
            with unit_of_work(factory) as session:
                result = MatchingService(session, CONFIG).record(
                    kind, block_analysis(seed, 3), model_id="model-a", details=EventDetails()
                )
            recorded.append(result)
        policy = DeliveryPolicy(
            max_attempts=3, backoff_seconds=0.05, backoff_max_seconds=0.2, timeout_seconds=0.3
        )
        worker = WebhookWorker(WebhookDispatcher(engine, policy, rng=random.Random(0)), poll_seconds=0.02)
        worker.start()
        try:

            def settled() -> bool:
                with factory() as session:
                    return all(d.status != DeliveryStatus.PENDING.value for d in _deliveries(session))

            _wait(settled)
            with unit_of_work(factory) as session:
                dead = WebhookService(session).dead_letters(subscription_id=None, limit=10, cursor=None).data
            assert [(d.event_id, d.attempts, d.last_status_code) for d in dead] == [
                (recorded[2].event_id, 3, 500)
            ]
            with unit_of_work(factory) as session:
                WebhookService(session).redeliver(dead[0].id)
            _wait(settled)
        finally:
            worker.stop()

    event_ids = [result.event_id for result in recorded]
    accepted = [body["event"]["id"] for body in receiver.accepted()]
    # The timed-out attempt reached the receiver: its event comes twice; dropping repeats by id leaves each
    # event once. The dead letter (event 3) arrives after its redelivery.
    assert accepted == [event_ids[0], event_ids[0], event_ids[1], event_ids[3], event_ids[2]]
    first_arrivals = list(dict.fromkeys(accepted))
    assert sorted(first_arrivals) == event_ids
    for pallet in {result.pallet_id for result in recorded}:
        own = [result.event_id for result in recorded if result.pallet_id == pallet]
        assert [event for event in first_arrivals if event in own] == own, "in order per pallet"
    for _, headers, body in receiver.requests:
        timestamp, signed = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
        assert verify(SECRET, timestamp, body, signed, now=time.time(), tolerance=300)
        assert not verify("another-secret-0000", timestamp, body, signed, now=time.time(), tolerance=300)
        assert not verify(SECRET, timestamp, body + b" ", signed, now=time.time(), tolerance=300)
        assert not verify(SECRET, timestamp, body, signed, now=time.time() + 3600, tolerance=300), "replayed"
        assert headers[EVENT_ID_HEADER] == str(json.loads(body)["event"]["id"])
    with factory() as session:
        deliveries = _deliveries(session)
    assert {d.status for d in deliveries} == {DeliveryStatus.DELIVERED.value}
    assert [d.attempts for d in deliveries] == [3, 1, 1, 1], "event 3 counted from 0 again after redelivery"
    assert all(
        json.loads(body)["subscription_id"] == str(subscription.id) for _, _, body in receiver.requests
    )


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    policy = DeliveryPolicy(backoff_seconds=2.0, backoff_max_seconds=20.0)
    rng = random.Random(1)
    for attempts, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 20.0), (9, 20.0)]:
        delays = [policy.delay(attempts, rng) for _ in range(200)]
        assert all(ceiling / 2 <= delay < ceiling for delay in delays), attempts
        assert max(delays) - min(delays) > ceiling / 4, "jittered"


def test_the_service_delivers_from_its_lifespan_worker(
    fresh_database: Callable[..., Any], tiny_checkpoint: Path, make_settings: Callable[..., Settings]
) -> None:
    """End to end: subscribe over the API, post a receipt, the worker the app started delivers it."""
    with fresh_database() as url, Receiver([], slow_seconds=0) as receiver:
        upgrade_to_head(url)
        settings = make_settings(url, tiny_checkpoint, webhook_poll_seconds=0.05)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            created = client.post("/v1/webhooks", json={"url": receiver.url, "secret": SECRET})
            assert created.status_code == 201, created.text
            receipt = client.post("/v1/receipts", files=block_files(noise_blocks(1420, 3)))
            assert receipt.status_code == 201, receipt.text
            _wait(lambda: len(receiver.accepted()) == 1)
            subscription = client.get(f"/v1/webhooks/{created.json()['id']}").json()
        assert receiver.accepted()[0]["event"]["id"] == receipt.json()["event_id"]
        assert (subscription["pending"], subscription["dead"]) == (0, 0)
