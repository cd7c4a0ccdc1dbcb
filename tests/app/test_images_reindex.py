"""Model upgrade: the stored block images fingerprinted again by a second real (tiny) model, resumably, and
after switching the service to it every pallet is still identified."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import torch
from api_testkit import FreshDatabase, block_files, noise_blocks
from fastapi.testclient import TestClient
from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from app.cli import main
from app.db.migrations import upgrade_to_head
from app.db.tables import BlockImage, Fingerprint
from app.errors import ConfigurationError
from app.images.reindex import ReindexRepository, reindex
from app.images.store import ImageStore
from app.main import create_app
from app.model_runner import ModelRunner
from app.settings import Settings
from models.runtime.checkpoint import CheckpointMetadata, save_checkpoint
from models.runtime.pcb import build_model
from models.runtime.voting import GeometryParameters


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another random-weight PCB (other weights, other input size): another model id, same 512 dims."""
    torch.manual_seed(1)
    model = build_model(
        "resnet18", num_classes=0, num_parts=4, part_dim=128, part_axis="width", last_stride=1, weights=None
    )
    path = tmp_path_factory.mktemp("checkpoint-b") / "tiny-b.safetensors"
    metadata = CheckpointMetadata.for_model(
        model, image_height=40, image_width=80, training={"purpose": "tests"}
    )
    save_checkpoint(model, path, metadata=metadata)
    return path


@pytest.fixture
def store(client: TestClient, tmp_path: Path) -> Iterator[ImageStore]:
    app = client.app
    previous = app.state.image_store  # type: ignore[attr-defined]
    app.state.image_store = ImageStore(tmp_path / "images")  # type: ignore[attr-defined]
    yield app.state.image_store  # type: ignore[attr-defined]
    app.state.image_store = previous  # type: ignore[attr-defined]


def post(client: TestClient, path: str, blobs: list[bytes]) -> dict[str, Any]:
    response = client.post(path, files=block_files(blobs))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_reindex_then_switch_keeps_every_pallet(
    client: TestClient,
    store: ImageStore,
    session_factory: Callable[[], Session],
    connection: Connection,
    database_url: str,
    second_checkpoint: Path,
    make_settings: Callable[..., Settings],
    bind_to_test_connection: Callable[[TestClient], AbstractContextManager[TestClient]],
) -> None:
    pallets = {seed: noise_blocks(seed, count=3) for seed in (101, 102, 103, 104)}
    registered = {seed: post(client, "/v1/receipts", blobs)["pallet_id"] for seed, blobs in pallets.items()}
    assert post(client, "/v1/dispatches", pallets[101])["pallet_id"] == registered[101]
    old_model = client.get("/readyz").json()["model"]
    # Pallet 104's image file is lost: its event cannot be fingerprinted again.
    lost = connection.scalars(
        select(BlockImage.sha256)
        .join(Fingerprint, Fingerprint.event_id == BlockImage.event_id)
        .where(Fingerprint.pallet_id == registered[104])
        .limit(1)
    ).one()
    store.delete(lost)

    runner = ModelRunner.load(second_checkpoint, num_threads=1)
    try:
        assert runner.model_id != old_model
        extractor = GeometryParameters().extractor
        seen: list[tuple[int, int]] = []
        first = reindex(
            session_factory,
            store,
            model_id=runner.model_id,
            embed=runner.embed,
            extractor=extractor,
            batch_size=2,
            max_batches=1,
            progress=lambda done, total: seen.append((done, total)),
        )
        assert (first.events_fingerprinted, first.fingerprints_added) == (2, 6)
        assert seen == [(2, 5)]
        rest = reindex(
            session_factory, store, model_id=runner.model_id, embed=runner.embed, extractor=extractor
        )
        assert (rest.events_fingerprinted, rest.fingerprints_added, rest.events_without_images) == (2, 6, 1)
        again = reindex(
            session_factory, store, model_id=runner.model_id, embed=runner.embed, extractor=extractor
        )
        assert (again.events_fingerprinted, again.events_without_images) == (0, 1)
    finally:
        runner.close()
    count = connection.scalar(
        select(func.count()).select_from(Fingerprint).where(Fingerprint.model_id == runner.model_id)
    )
    assert count == 12, "four events of three blocks, each once"
    with session_factory() as session:
        coverage = {item.model_id: item.share for item in ReindexRepository(session).coverage()}
    assert coverage == {old_model: 1.0, runner.model_id: 0.75}

    # Switch the service to the new model: the three covered pallets are identified as before.
    switched = create_app(make_settings(database_url, second_checkpoint, image_store=store.root))
    with (
        TestClient(switched, raise_server_exceptions=False) as raw,
        bind_to_test_connection(raw) as new_client,
    ):
        assert new_client.get("/readyz").json()["model"] == runner.model_id
        returning = post(new_client, "/v1/receipts", pallets[101])
        assert (returning["decision"], returning["pallet_id"], returning["model"]) == (
            "matched",
            registered[101],
            runner.model_id,
        )
        for seed in (102, 103):
            leaving = post(new_client, "/v1/dispatches", pallets[seed])
            assert (leaving["decision"], leaving["pallet_id"]) == ("matched", registered[seed])


def test_reindex_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["reindex", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "--batch-size" in out and "--threads" in out


def test_a_model_without_every_pallet_is_refused_until_reindexed(
    fresh_database: FreshDatabase,
    tiny_checkpoint: Path,
    second_checkpoint: Path,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = tmp_path / "images"
    with fresh_database() as url:
        upgrade_to_head(url)
        with TestClient(create_app(make_settings(url, tiny_checkpoint, image_store=images))) as old:
            for seed in (111, 112):
                post(old, "/v1/receipts", noise_blocks(seed, count=2))
            old_model = old.get("/readyz").json()["model"]
            assert old.get("/readyz").json()["model_coverage"] == [
                {"model_id": old_model, "pallets": 2, "share": 1.0}
            ]

        refused = create_app(make_settings(url, second_checkpoint, image_store=images))
        with pytest.raises(ConfigurationError, match="palletreid reindex"), TestClient(refused):
            pass
        forced = make_settings(url, second_checkpoint, image_store=images, allow_partial_coverage=True)
        with TestClient(create_app(forced)) as partial:
            assert [item["model_id"] for item in partial.get("/readyz").json()["model_coverage"]] == [
                old_model
            ]

        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("PALLETREID_IMAGE_STORE", str(images))
        command = ["reindex", "--checkpoint", str(second_checkpoint), "--batch-size", "1", "--threads", "1"]
        assert main(command) == 0
        out = capsys.readouterr().out
        assert "2 events fingerprinted (4 blocks), 0 without their images" in out
        assert "2 pallets, 100.0 % covered" in out

        with TestClient(create_app(make_settings(url, second_checkpoint, image_store=images))) as switched:
            ready = switched.get("/readyz").json()
            assert {item["model_id"]: item["share"] for item in ready["model_coverage"]} == {
                old_model: 1.0,
                ready["model"]: 1.0,
            }
            assert post(switched, "/v1/dispatches", noise_blocks(112, count=2))["decision"] == "matched"
