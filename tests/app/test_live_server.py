"""The real server over HTTP on loopback: many requests in flight keep every invariant, and killing the
process mid-request leaves no partial rows.

Each test gets its own freshly migrated database; requests are bounded in number and time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from api_testkit import FreshDatabase, block_files, free_port, noise_blocks
from sqlalchemy import create_engine, text

from app.db.migrations import upgrade_to_head
from app.main import create_app
from app.settings import Settings

BLOCKS_PER_REQUEST = 4
IN_FLIGHT = 24
TIMEOUT = httpx.Timeout(60.0)
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def migrated_database(fresh_database: FreshDatabase) -> Iterator[str]:
    with fresh_database() as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture
def live_server(
    migrated_database: str, tiny_checkpoint: Path, make_settings: Callable[..., Settings]
) -> Iterator[str]:
    """uvicorn serving the app in a thread on 127.0.0.1; yields its base URL."""
    # Every request in flight may wait for the model (none is refused with 503 overloaded).
    app = create_app(
        make_settings(migrated_database, tiny_checkpoint, db_pool_size=8, max_queued_requests=IN_FLIGHT)
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, workers=1))
    thread = threading.Thread(target=server.run, name="uvicorn-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _images(pallet: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return block_files(noise_blocks(seed=1000 + pallet, count=BLOCKS_PER_REQUEST))


async def _post_all(
    base_url: str,
    requests: list[tuple[str, int, str | None]],
    on_response: Callable[[int], None] | None = None,
) -> list[httpx.Response | BaseException]:
    """Send (path, pallet, idempotency key) requests with up to IN_FLIGHT at once."""
    limits = httpx.Limits(max_connections=IN_FLIGHT)
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT, limits=limits) as client:

        async def send(path: str, pallet: int, key: str | None) -> httpx.Response:
            headers = {"Idempotency-Key": key} if key else {}
            response = await client.post(path, files=_images(pallet), headers=headers)
            if on_response is not None:
                on_response(response.status_code)
            return response

        return await asyncio.gather(*(send(*request) for request in requests), return_exceptions=True)


def _integrity(database_url: str) -> dict[str, int]:
    """Counts of rows that would betray a half-written recording (all must be zero)."""
    checks = {
        "pallets_without_events": "SELECT count(*) FROM pallets p "
        "WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.pallet_id = p.id)",
        "events_with_wrong_block_count": "SELECT count(*) FROM events e WHERE "
        f"(SELECT count(*) FROM fingerprints f WHERE f.event_id = e.id) <> {BLOCKS_PER_REQUEST}",
        "fingerprints_of_another_pallet": "SELECT count(*) FROM fingerprints f "
        "JOIN events e ON e.id = f.event_id WHERE e.pallet_id <> f.pallet_id",
        "events_without_result": "SELECT count(*) FROM events WHERE result = '{}'::jsonb",
    }
    engine = create_engine(database_url)
    with engine.connect() as connection:
        counts = {name: int(connection.execute(text(sql)).scalar_one()) for name, sql in checks.items()}
        counts["events"] = int(connection.execute(text("SELECT count(*) FROM events")).scalar_one())
        counts["pallets"] = int(connection.execute(text("SELECT count(*) FROM pallets")).scalar_one())
    engine.dispose()
    return counts


def test_many_concurrent_receipts_and_dispatches_keep_every_invariant(
    live_server: str, migrated_database: str
) -> None:
    pallets = 12
    requests: list[tuple[str, int, str | None]] = []
    for pallet in range(pallets):
        # One receipt and any number of dispatches identify one pallet whatever order they run in.
        requests += [("/v1/receipts", pallet, None), ("/v1/dispatches", pallet, None)]
        requests += [("/v1/dispatches", pallet, f"retry-{pallet}")] * (2 if pallet % 2 else 1)
    requests = requests[::2] + requests[1::2]  # spread each pallet's requests apart

    responses = asyncio.run(_post_all(live_server, requests))

    bodies = []
    for response in responses:
        assert isinstance(response, httpx.Response), repr(response)
        assert response.status_code == 201, response.text
        bodies.append(response.json())
    by_key: dict[str, list[dict[str, object]]] = {}
    for (_, _, key), body in zip(requests, bodies, strict=True):
        if key is not None:
            by_key.setdefault(key, []).append(body)
    assert all(len({str(body) for body in replies}) == 1 for replies in by_key.values()), "retry differed"

    expected_events = 3 * pallets
    assert len({body["event_id"] for body in bodies}) == expected_events
    pallet_of = {
        pallet: {body["pallet_id"] for (_, p, _), body in zip(requests, bodies, strict=True) if p == pallet}
        for pallet in range(pallets)
    }
    assert all(len(ids) == 1 for ids in pallet_of.values()), "a pallet was registered twice"
    assert len({next(iter(ids)) for ids in pallet_of.values()}) == pallets
    decisions = {body["event_id"]: body["decision"] for body in bodies}  # retries replay their event
    assert Counter(decisions.values())["registered"] == pallets

    with httpx.Client(base_url=live_server, timeout=TIMEOUT) as client:
        listed = client.get("/v1/pallets", params={"limit": 200}).json()["data"]
        assert len(listed) == pallets
        last_kind = {body["pallet_id"]: body["kind"] for body in sorted(bodies, key=lambda b: b["event_id"])}
        status_after = {"receipt": "in_stock", "dispatch": "dispatched"}
        for pallet in listed:
            assert (pallet["receipts"], pallet["dispatches"]) == (1, 2)
            assert pallet["status"] == status_after[last_kind[pallet["pallet_id"]]]
        feed = client.get("/v1/events", params={"limit": 200}).json()["data"]
        assert [event["id"] for event in feed] == sorted({body["event_id"] for body in bodies})
    integrity = _integrity(migrated_database)
    assert integrity == {**dict.fromkeys(integrity, 0), "events": expected_events, "pallets": pallets}


def test_killing_the_server_mid_request_leaves_no_partial_rows(
    migrated_database: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": migrated_database,
        "PALLETREID_MODEL_PATH": str(tiny_checkpoint),
        "PALLETREID_MODEL_THREADS": "1",
        "PALLETREID_MAX_QUEUED_REQUESTS": str(IN_FLIGHT),
        # The random-weight test model carries no calibrated decision parameters: all three thresholds.
        "PALLETREID_BLOCK_THRESHOLD": "0.995",
        "PALLETREID_MIN_VOTES": "2",
        "PALLETREID_SCORE_THRESHOLD": "0.995",
    }
    env.pop("PALLETREID_API_KEYS", None)
    env.pop("PALLETREID_API_KEYS_FILE", None)
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--no-migrate",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180  # a cold start imports torch; CI machines can be slow
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "server did not become ready"
            try:
                if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

        completed = 0

        def kill_after_a_few(status: int) -> None:
            nonlocal completed
            completed += 1
            if completed == 4:
                server.send_signal(signal.SIGKILL)

        requests: list[tuple[str, int, str | None]] = [
            ("/v1/receipts", pallet, f"kill-{pallet}") for pallet in range(32)
        ]
        responses = asyncio.run(_post_all(base_url, requests, on_response=kill_after_a_few))
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        log.close()

    acknowledged = [r.json() for r in responses if isinstance(r, httpx.Response) and r.status_code == 201]
    failed = [r for r in responses if isinstance(r, BaseException)]
    assert len(acknowledged) >= 4 and failed, "the kill must land while requests are in flight"
    integrity = _integrity(migrated_database)
    events, pallets = integrity.pop("events"), integrity.pop("pallets")
    assert integrity == dict.fromkeys(integrity, 0)
    assert len(acknowledged) <= events == pallets < len(requests)
    engine = create_engine(migrated_database)
    with engine.connect() as connection:
        stored = set(connection.execute(text("SELECT id FROM events")).scalars())
        keys = connection.execute(text("SELECT count(*) FROM idempotency_keys")).scalar_one()
    engine.dispose()
    assert {body["event_id"] for body in acknowledged} <= stored, "an acknowledged event was lost"
    assert keys == len(stored)
