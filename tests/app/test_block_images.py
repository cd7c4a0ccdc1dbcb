"""Block images kept as received: the store, the endpoint, failed requests leaving nothing, and gc."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from api_testkit import FreshDatabase, block_files, noise_blocks
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Connection, create_engine, func, select, text, update
from sqlalchemy.orm import Session

from app.cli import main
from app.db.migrations import upgrade_to_head
from app.db.session import build_session_factory, unit_of_work
from app.db.tables import BlockImage, Event, Fingerprint
from app.images.service import STALE_TEMPORARY_SECONDS, collect_garbage
from app.images.store import ImageStore, media_type_of


@pytest.fixture
def store(client: TestClient, tmp_path: Path) -> Iterator[ImageStore]:
    """A fresh image store for the app during this test."""
    app = client.app
    previous = app.state.image_store  # type: ignore[attr-defined]
    app.state.image_store = ImageStore(tmp_path / "images")  # type: ignore[attr-defined]
    yield app.state.image_store  # type: ignore[attr-defined]
    app.state.image_store = previous  # type: ignore[attr-defined]


def stored_digests(store: ImageStore) -> set[str]:
    return {item.sha256 for item in store.files()}


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((96, 48), 40 + seed).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def test_store_writes_once_per_content_and_reads_back(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    data = noise_blocks(1, count=1)[0]
    digest, created = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest() and created
    assert store.put(data) == (digest, False)
    assert store.read(digest) == data
    assert store.path_for(digest).relative_to(tmp_path).parts[:3] == ("sha256", digest[:2], digest[2:4])
    assert not list((tmp_path / "tmp").iterdir()), "no temporary file left behind"
    assert store.delete(digest) and store.read(digest) is None and not store.delete(digest)


def test_media_type_from_signature() -> None:
    assert media_type_of(noise_blocks(1, count=1)[0]) == "image/png"
    assert media_type_of(noise_blocks(1, count=1, image_format="WEBP")[0]) == "image/webp"
    assert media_type_of(jpeg(1)) == "image/jpeg"
    with pytest.raises(ValueError):
        media_type_of(b"GIF89a....")


def test_recorded_blocks_are_served_as_received(client: TestClient, store: ImageStore) -> None:
    blobs = [*noise_blocks(11, count=2), jpeg(3), noise_blocks(12, count=1, image_format="WEBP")[0]]
    result = client.post("/v1/receipts", files=block_files(blobs, content_type="application/octet-stream"))
    assert result.status_code == 201, result.text
    event_id = result.json()["event_id"]
    for position, (blob, media_type) in enumerate(
        zip(blobs, ["image/png", "image/png", "image/jpeg", "image/webp"], strict=True)
    ):
        response = client.get(f"/v1/events/{event_id}/blocks/{position}")
        assert response.status_code == 200
        assert response.content == blob
        assert response.headers["content-type"] == media_type
    assert stored_digests(store) == {hashlib.sha256(blob).hexdigest() for blob in blobs}
    missing = client.get(f"/v1/events/{event_id}/blocks/4")
    assert missing.status_code == 404 and missing.json()["type"] == "block_image_not_found"
    assert client.get("/v1/events/999999999/blocks/0").status_code == 404


def test_a_retry_with_the_same_key_stores_nothing_new(
    client: TestClient, store: ImageStore, connection: Connection
) -> None:
    blobs = noise_blocks(21, count=3)
    headers = {"Idempotency-Key": "retry-1"}
    first = client.post("/v1/receipts", files=block_files(blobs), headers=headers)
    again = client.post("/v1/receipts", files=block_files(blobs), headers=headers)
    assert first.status_code == again.status_code == 201
    assert connection.scalar(select(func.count()).select_from(BlockImage)) == 3
    assert len(stored_digests(store)) == 3


def test_identical_bytes_are_stored_once_for_two_events(client: TestClient, store: ImageStore) -> None:
    blobs = noise_blocks(22, count=2)
    first = client.post("/v1/receipts", files=block_files(blobs)).json()["event_id"]
    second = client.post("/v1/dispatches", files=block_files(blobs)).json()["event_id"]
    assert len(stored_digests(store)) == 2
    for event_id in (first, second):
        assert client.get(f"/v1/events/{event_id}/blocks/1").content == blobs[1]


def test_a_failed_request_leaves_no_image_and_no_row(
    client: TestClient, store: ImageStore, connection: Connection
) -> None:
    kept = noise_blocks(31, count=2)
    assert client.post("/v1/receipts", files=block_files(kept)).status_code == 201
    before = stored_digests(store)
    rows_before = connection.scalar(select(func.count()).select_from(BlockImage))

    connection.execute(
        text(
            "CREATE FUNCTION refuse_images() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'constraint failed (test)'; END $$"
        )
    )
    connection.execute(
        text(
            "CREATE TRIGGER refuse_images BEFORE INSERT ON block_images "
            "FOR EACH ROW EXECUTE FUNCTION refuse_images()"
        )
    )
    # One image already stored by the first event, two new ones: only the new files go away.
    response = client.post("/v1/dispatches", files=block_files([kept[0], *noise_blocks(32, count=2)]))

    assert response.status_code == 500
    assert stored_digests(store) == before
    assert connection.scalar(select(func.count()).select_from(BlockImage)) == rows_before
    assert connection.scalar(select(func.count()).select_from(Event)) == 1


def test_gc_removes_orphans_and_stale_temporary_files_only(
    client: TestClient, store: ImageStore, session_factory: Callable[[], Session]
) -> None:
    blobs = noise_blocks(41, count=2)
    assert client.post("/v1/receipts", files=block_files(blobs)).status_code == 201
    orphan, _ = store.put(noise_blocks(42, count=1)[0])  # a crash between file and commit
    stale = store.root / "tmp" / "crashed.tmp"
    stale.write_bytes(b"half an image")
    old = time.time() - STALE_TEMPORARY_SECONDS - 60
    os.utime(stale, (old, old))
    fresh = store.root / "tmp" / "writing.tmp"
    fresh.write_bytes(b"being written")
    now = datetime.now(UTC)

    dry = collect_garbage(session_factory, store, now=now, retention_days=None, dry_run=True)
    assert (dry.orphan_files, dry.temporary_files, dry.expired_rows) == (1, 1, 0)
    assert store.exists(orphan) and stale.exists()

    report = collect_garbage(session_factory, store, now=now, retention_days=None)
    assert (report.orphan_files, report.temporary_files) == (1, 1)
    assert report.orphan_bytes == len(noise_blocks(42, count=1)[0])
    assert not store.exists(orphan) and not stale.exists() and fresh.exists()
    assert stored_digests(store) == {hashlib.sha256(blob).hexdigest() for blob in blobs}


def test_retention_deletes_old_images_but_keeps_fingerprints(
    client: TestClient,
    store: ImageStore,
    session_factory: Callable[[], Session],
    connection: Connection,
) -> None:
    old_blobs, new_blobs = noise_blocks(51, count=2), noise_blocks(52, count=2)
    old_event = client.post("/v1/receipts", files=block_files(old_blobs)).json()["event_id"]
    new_event = client.post("/v1/receipts", files=block_files(new_blobs)).json()["event_id"]
    shared = client.post("/v1/dispatches", files=block_files([old_blobs[0]])).json()["event_id"]
    connection.execute(
        update(Event)
        .where(Event.id.in_([old_event, shared]))
        .values(recorded_at=datetime.now(UTC) - timedelta(days=40))
    )
    connection.execute(
        update(Event).where(Event.id == new_event).values(recorded_at=datetime.now(UTC) - timedelta(days=5))
    )
    fingerprints = connection.scalar(select(func.count()).select_from(Fingerprint))

    dry = collect_garbage(session_factory, store, now=datetime.now(UTC), retention_days=30, dry_run=True)
    assert (dry.expired_rows, dry.orphan_files) == (3, 2)
    assert client.get(f"/v1/events/{old_event}/blocks/0").status_code == 200

    report = collect_garbage(session_factory, store, now=datetime.now(UTC), retention_days=30, batch_size=1)
    assert (report.expired_rows, report.orphan_files) == (3, 2)
    for event_id, position in [(old_event, 0), (old_event, 1), (shared, 0)]:
        gone = client.get(f"/v1/events/{event_id}/blocks/{position}")
        assert gone.status_code == 404 and gone.json()["type"] == "block_image_not_found"
    assert client.get(f"/v1/events/{new_event}/blocks/1").content == new_blobs[1]
    assert stored_digests(store) == {hashlib.sha256(blob).hexdigest() for blob in new_blobs}
    assert connection.scalar(select(func.count()).select_from(Fingerprint)) == fingerprints


def test_gc_command_on_a_real_database(
    fresh_database: FreshDatabase,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = ImageStore(tmp_path / "images")
    with fresh_database() as url:
        upgrade_to_head(url)
        referenced, _ = store.put(noise_blocks(61, count=1)[0])
        orphan, _ = store.put(noise_blocks(62, count=1)[0])
        engine = create_engine(url)
        with unit_of_work(build_session_factory(engine)) as session:
            session.execute(
                text(
                    "INSERT INTO pallets (id, status, first_seen, last_seen) "
                    "VALUES ('00000000-0000-4000-8000-000000000001', 'in_stock', now(), now())"
                )
            )
            event_id = session.execute(
                text(
                    "INSERT INTO events (pallet_id, kind, decision, votes, blocks_compared, model_id, "
                    "result) VALUES ('00000000-0000-4000-8000-000000000001', 'receipt', 'registered', "
                    "0, 1, 'm', '{}') RETURNING id"
                )
            ).scalar_one()
            session.add(
                BlockImage(
                    event_id=event_id, position=0, sha256=referenced, media_type="image/png", size_bytes=1
                )
            )
        engine.dispose()
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("PALLETREID_IMAGE_STORE", str(store.root))

        assert main(["gc", "--dry-run"]) == 0
        assert (
            "would delete: 0 expired block images (retention off), 1 unreferenced files"
            in capsys.readouterr().out
        )
        assert store.exists(orphan)
        assert main(["gc"]) == 0
        assert "deleted: 0 expired block images" in capsys.readouterr().out
        assert stored_digests(store) == {referenced}


def test_gc_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["gc", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--dry-run" in out and "--retention-days" in out
