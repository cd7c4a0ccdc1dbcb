"""The event feed resumes exactly: every page carries a cursor after its last event, also at the end, and
event ids commit in increasing order, so a follower polling with that cursor misses and repeats nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from api_testkit import block_analysis, block_files, noise_blocks
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from app.db.migrations import upgrade_to_head
from app.db.session import build_session_factory, unit_of_work
from app.db.tables import EventKind
from app.events.service import EventService
from app.matching.service import EventDetails, MatchingConfig, MatchingService
from models.runtime.voting import VotingThresholds

CONFIG = MatchingConfig(
    thresholds=VotingThresholds(block_threshold=0.8, min_votes=2, score_threshold=0.3),
    top_k=10,
    shortlist_size=10,
    captures_per_pallet=3,
    ef_search=40,
    words_ef_search=40,
    max_candidates=5,
)


def _receipt(client: TestClient, seed: int) -> dict[str, Any]:
    response = client.post("/v1/receipts", files=block_files(noise_blocks(seed=seed, count=3)))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _feed(client: TestClient, **params: str | int) -> dict[str, Any]:
    response = client.get("/v1/events", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_last_page_has_a_cursor_that_returns_only_newer_events(client: TestClient) -> None:
    first = _feed(client, limit=200)
    assert not first["has_more"]
    assert first["next_cursor"]
    start = first["next_cursor"]

    assert _feed(client, cursor=start) == {"data": [], "next_cursor": start, "has_more": False}
    events = [_receipt(client, seed) for seed in (801, 802, 803)]

    page = _feed(client, cursor=start, limit=2)
    assert [event["id"] for event in page["data"]] == [events[0]["event_id"], events[1]["event_id"]]
    assert page["has_more"]
    end = _feed(client, cursor=page["next_cursor"], limit=2)
    assert [event["id"] for event in end["data"]] == [events[2]["event_id"]]
    assert not end["has_more"]

    later = _receipt(client, 804)
    resumed = _feed(client, cursor=end["next_cursor"])
    assert [event["id"] for event in resumed["data"]] == [later["event_id"]]


def test_an_empty_cursor_means_from_the_start(client: TestClient) -> None:
    event = _receipt(client, 805)
    empty = _feed(client, cursor="", limit=200)
    absent = _feed(client, limit=200)
    assert empty == absent
    assert event["event_id"] in [item["id"] for item in empty["data"]]
    pallets = client.get("/v1/pallets", params={"cursor": ""})
    assert pallets.status_code == 200, pallets.text


def test_a_filtered_feed_also_resumes_after_its_last_event(client: TestClient) -> None:
    receipt = _receipt(client, 806)
    start = _feed(client, kind="dispatch", limit=200)["next_cursor"]
    dispatch = client.post("/v1/dispatches", files=block_files(noise_blocks(seed=806, count=3))).json()
    _receipt(client, 807)
    page = _feed(client, kind="dispatch", cursor=start)
    assert [event["id"] for event in page["data"]] == [dispatch["event_id"]]
    assert receipt["pallet_id"] == dispatch["pallet_id"]
    assert _feed(client, kind="dispatch", cursor=page["next_cursor"])["data"] == []


def test_a_follower_polling_during_concurrent_recordings_sees_every_event_once_in_id_order(
    fresh_database: Callable[..., Any],
) -> None:
    """Writers record in parallel while a follower polls with the cursor it got last; ids committed out of
    order would make it skip an event (its cursor already past an id that commits later)."""
    writers, per_writer = 3, 4
    with fresh_database() as url:
        upgrade_to_head(url)
        engine = create_engine(url, pool_size=writers + 2)
        factory = build_session_factory(engine)
        recorded: list[int] = []
        done = threading.Event()

        def write(writer: int) -> None:
            for index in range(per_writer):
                with unit_of_work(factory) as session:
                    result = MatchingService(session, CONFIG).record(
                        EventKind.RECEIPT,
                        block_analysis(seed=900 + writer * per_writer + index, count=3),
                        model_id="model-a",
                        details=EventDetails(),
                    )
                recorded.append(result.event_id)

        threads = [threading.Thread(target=write, args=(writer,)) for writer in range(writers)]
        for thread in threads:
            thread.start()
        seen: list[int] = []
        cursor: str | None = None
        while True:
            finished = done.is_set()
            with unit_of_work(factory) as session:
                page = EventService(session).feed(since=None, kind=None, limit=2, cursor=cursor)
            seen.extend(event.id for event in page.data)
            cursor = page.next_cursor
            if finished and not page.has_more:
                break
            if not any(thread.is_alive() for thread in threads):
                done.set()
        for thread in threads:
            thread.join(timeout=30)
        engine.dispose()
    assert len(recorded) == writers * per_writer
    assert seen == sorted(recorded)
