"""Model upgrade: the stored block images fingerprinted again by a second real (tiny) model of another
fingerprint size, resumably, and after switching the service to it every pallet is still identified."""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from api_testkit import FreshDatabase, block_files, noise_blocks, unit_vectors
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, create_engine, func, select, text, update
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.orm import Session

from app.cli import main
from app.db.migrations import upgrade_to_head
from app.db.session import build_session_factory, unit_of_work
from app.db.tables import BlockImage, Fingerprint
from app.errors import ConfigurationError
from app.images.reindex import ReindexRepository, ensure_serving_index, fill_side_scale_features, reindex
from app.images.store import ImageStore
from app.main import create_app
from app.matching.repository import (
    FingerprintRepository,
    ensure_hnsw_index,
    hnsw_index_name,
    hnsw_index_valid,
    hnsw_search_settings,
    nearest_per_block_query,
)
from app.model_runner import ModelRunner
from app.settings import Settings
from models.runtime.checkpoint import CheckpointMetadata, read_metadata, save_checkpoint
from models.runtime.images import decode_image
from models.runtime.local_features import LocalFeatures, extract
from models.runtime.pcb import build_model
from models.runtime.voting import CaptureFeatures, GeometryParameters, side_scale_features
from models.synth.sides import render_side


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another random-weight PCB: other weights, input size and fingerprint size (4 parts x 64 = 256 dims
    instead of 512), so another model id with its own HNSW index."""
    torch.manual_seed(1)
    model = build_model(
        "resnet18", num_classes=0, num_parts=4, part_dim=64, part_axis="width", last_stride=1, weights=None
    )
    path = tmp_path_factory.mktemp("checkpoint-b") / "tiny-b.safetensors"
    metadata = CheckpointMetadata.for_model(
        model, image_height=40, image_width=80, training={"purpose": "tests"}
    )
    save_checkpoint(model, path, metadata=metadata)
    return path


def post(client: TestClient, path: str, blobs: list[bytes]) -> dict[str, Any]:
    response = client.post(path, files=block_files(blobs))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def generic_search_plan(engine: Engine, queries: np.ndarray, model_id: str) -> str:
    """EXPLAIN of the service's batched k-NN statement in the generic plan of a prepared statement (what a
    connection reuses once it prepared the statement: the values of its parameters unknown to the planner),
    under the service's search settings. Sequential scans are off, so the plan names an index if one can
    serve the statement at all."""
    statement = nearest_per_block_query(queries, model_id=model_id, limit=5)
    compiled = statement.compile(dialect=psycopg_dialect(), compile_kwargs={"render_postcompile": True})
    sql = str(compiled)
    arguments = []
    for position, (name, value) in enumerate(compiled.params.items(), start=1):
        sql = sql.replace(f"%({name})s", f"${position}")
        if isinstance(value, list):  # the query blocks: an array of halfvec literals
            arguments.append("'{" + ",".join(f'"{vector.to_text()}"' for vector in value) + "}'")
        elif isinstance(value, str):
            arguments.append("'" + value.replace("'", "''") + "'")
        else:
            arguments.append(str(int(value)))
    with engine.begin() as connection:
        for name, setting in hnsw_search_settings(ef_search=40).items():
            connection.execute(select(func.set_config(name, setting, True)))
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        connection.exec_driver_sql(f"PREPARE knn AS {sql}")
        plan = "\n".join(connection.exec_driver_sql(f"EXPLAIN EXECUTE knn({', '.join(arguments)})").scalars())
        connection.exec_driver_sql("DEALLOCATE knn")
    return plan


def test_reindex_then_switch_to_a_model_of_another_size_keeps_every_pallet(
    fresh_database: FreshDatabase,
    tiny_checkpoint: Path,
    second_checkpoint: Path,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    store = ImageStore(tmp_path / "images")
    pallets = {seed: noise_blocks(seed, count=3) for seed in (101, 102, 103, 104)}
    with fresh_database() as url:
        upgrade_to_head(url)
        engine = create_engine(url)
        factory = build_session_factory(engine)
        with TestClient(create_app(make_settings(url, tiny_checkpoint, image_store=store.root))) as old:
            registered = {
                seed: post(old, "/v1/receipts", blobs)["pallet_id"] for seed, blobs in pallets.items()
            }
            assert post(old, "/v1/dispatches", pallets[101])["pallet_id"] == registered[101]
            old_model = old.get("/readyz").json()["model"]
        # Pallet 104's image file is lost: its event cannot be fingerprinted again.
        with factory() as session:
            lost = session.scalars(
                select(BlockImage.sha256)
                .join(Fingerprint, Fingerprint.event_id == BlockImage.event_id)
                .where(Fingerprint.pallet_id == registered[104])
                .limit(1)
            ).one()
        store.delete(lost)

        runner = ModelRunner.load(second_checkpoint, num_threads=1)
        try:
            new_model = runner.model_id
            assert new_model != old_model and runner.embedding_dim == 256
            geometry = GeometryParameters()
            reindex_new_model = functools.partial(
                reindex,
                factory,
                store,
                model_id=new_model,
                embed=runner.embed,
                geometry=geometry,
            )
            seen: list[tuple[int, int]] = []
            first = reindex_new_model(
                batch_size=2, max_batches=1, progress=lambda done, total: seen.append((done, total))
            )
            assert (first.events_fingerprinted, first.fingerprints_added) == (2, 6)
            assert seen == [(2, 5)]
            rest = reindex_new_model()
            assert (rest.events_fingerprinted, rest.fingerprints_added) == (2, 6)
            assert rest.events_without_images == 1
            again = reindex_new_model()
            assert (again.events_fingerprinted, again.events_without_images) == (0, 1)
            new_queries = runner.embed([Image.open(io.BytesIO(blob)) for blob in pallets[102]])
        finally:
            runner.close()
        with factory() as session:
            per_model = select(Fingerprint.model_id).group_by(Fingerprint.model_id)
            dims = func.min(func.vector_dims(Fingerprint.embedding))
            sizes = {model: int(dim) for model, dim in session.execute(per_model.add_columns(dims))}
            counts = {model: int(n) for model, n in session.execute(per_model.add_columns(func.count()))}
            coverage = {item.model_id: item.share for item in ReindexRepository(session).coverage()}
        assert sizes == {old_model: 512, new_model: 256}, "both sizes in one column"
        assert counts == {old_model: 15, new_model: 12}, "four events of three blocks, each once"
        assert coverage == {old_model: 1.0, new_model: 0.75}

        # Switch the service to the new model (pallet 104's only images are lost, hence partial coverage):
        # its HNSW index is built at start and the three covered pallets are identified as before.
        switched = make_settings(url, second_checkpoint, image_store=store.root, allow_partial_coverage=True)
        with TestClient(create_app(switched)) as new:
            assert new.get("/readyz").json()["model"] == new_model
            returning = post(new, "/v1/receipts", pallets[101])
            assert (returning["decision"], returning["pallet_id"], returning["model"]) == (
                "matched",
                registered[101],
                new_model,
            )
            for seed in (102, 103):
                leaving = post(new, "/v1/dispatches", pallets[seed])
                assert (leaving["decision"], leaving["pallet_id"]) == ("matched", registered[seed])
        # Each model's k-NN reads through its own partial index (the old one stays for a roll-back).
        assert hnsw_index_name(new_model) in generic_search_plan(engine, new_queries, new_model)
        old_queries = unit_vectors(seed=7, count=2)
        assert hnsw_index_name(old_model) in generic_search_plan(engine, old_queries, old_model)
        engine.dispose()


def test_side_view_captures_keep_their_extractor_when_stored_and_reindexed(
    fresh_database: FreshDatabase,
    tiny_checkpoint: Path,
    second_checkpoint: Path,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    """Blocks cut out of side views get their local features with ``side_view_extractor`` (more corners),
    block uploads with ``extractor`` and their side-scale features: as the service stores them, and again
    when reindexed for a new model. Side-scale features lost (a database from before they were stored) are
    filled from the stored images."""
    geometry = GeometryParameters()
    store = ImageStore(tmp_path / "images")
    sides = [render_side(0, 990_300, side, "chipsplat", "yard", (1280, 720)).jpeg for side in (0, 1)]
    with fresh_database() as url:
        upgrade_to_head(url)
        engine = create_engine(url)
        factory = build_session_factory(engine)
        with TestClient(create_app(make_settings(url, tiny_checkpoint, image_store=store.root))) as app:
            response = app.post(
                "/v1/receipts",
                files=[("sides", (f"side_{i}.jpg", b, "image/jpeg")) for i, b in enumerate(sides)],
            )
            assert response.status_code == 201, response.text
            from_sides = response.json()
            from_blocks = post(app, "/v1/receipts", noise_blocks(105, count=3))
            lost = post(app, "/v1/receipts", noise_blocks(106, count=3))["event_id"]
        runner = ModelRunner.load(second_checkpoint, num_threads=1)
        try:
            reindex(
                factory,
                store,
                model_id=runner.model_id,
                embed=runner.embed,
                geometry=geometry,
            )
        finally:
            runner.close()
        models = (from_sides["model"], runner.model_id)

        def stored_features() -> dict[tuple[int, str], CaptureFeatures]:
            with factory() as session:
                repository = FingerprintRepository(session)
                return {
                    (event["event_id"], model): repository.capture_features(
                        event["event_id"], model_id=model, side_scale=True
                    )
                    for event in (from_sides, from_blocks)
                    for model in models
                }

        def as_bytes(features: Sequence[LocalFeatures | None] | None) -> list[bytes | None] | None:
            return None if features is None else [None if f is None else f.to_bytes() for f in features]

        sides_images = _stored_images(factory, store, from_sides["event_id"])
        block_images = _stored_images(factory, store, from_blocks["event_id"])
        expected = {
            from_sides["event_id"]: (
                True,
                [extract(i, geometry.side_view_extractor) for i in sides_images],
                None,
            ),
            from_blocks["event_id"]: (
                False,
                [extract(image, geometry.extractor) for image in block_images],
                [side_scale_features(image, geometry) for image in block_images],
            ),
        }
        for (event_id, model), stored in stored_features().items():
            from_side_views, own, at_side_scale = expected[event_id]
            assert stored.from_side_views is from_side_views, (event_id, model)
            assert as_bytes(stored.features) == as_bytes(own), (event_id, model)
            assert as_bytes(stored.at_side_scale) == as_bytes(at_side_scale), (event_id, model)
        counts = [len(features) for features in expected[from_sides["event_id"]][1]]
        assert len(counts) == 6 and max(counts) > geometry.extractor.max_features, "more corners kept"

        # side-scale features lost: filled from the stored images, once; an event without images stays without
        with unit_of_work(factory) as session:
            session.execute(update(Fingerprint).values(side_scale_features=None))
            one_image = select(BlockImage.sha256).where(BlockImage.event_id == lost).limit(1)
            store.delete(session.scalars(one_image).one())
        filled = fill_side_scale_features(factory, store, model_id=from_sides["model"], geometry=geometry)
        assert (filled.events_filled, filled.fingerprints_filled, filled.events_without_images) == (1, 3, 1)
        for (event_id, model), stored in stored_features().items():
            refilled = expected[event_id][2] if model == from_sides["model"] else None  # only its model's
            assert as_bytes(stored.at_side_scale) == as_bytes(refilled), (event_id, model)
        again = fill_side_scale_features(factory, store, model_id=from_sides["model"], geometry=geometry)
        assert (again.events_filled, again.fingerprints_filled, again.events_without_images) == (0, 0, 1)
        with factory() as session:
            assert ReindexRepository(session).lacking_side_scale(
                from_sides["model"], after_id=0, limit=10
            ) == [lost]
        off = fill_side_scale_features(
            factory, store, model_id=from_sides["model"], geometry=GeometryParameters(side_scale_width=0)
        )
        assert off.events_without_images == 0 and off.events_filled == 0
        engine.dispose()


def _stored_images(factory: Callable[[], Session], store: ImageStore, event_id: int) -> list[Image.Image]:
    with factory() as session:
        rows = session.scalars(
            select(BlockImage).where(BlockImage.event_id == event_id).order_by(BlockImage.position)
        ).all()
    return [decode_image(store.read(row.sha256) or b"", name="stored block") for row in rows]


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
        assert "HNSW index of its 256-dim fingerprints in place" in out, "built by the forced start"
        assert "2 pallets, 100.0 % covered" in out

        with TestClient(create_app(make_settings(url, second_checkpoint, image_store=images))) as switched:
            ready = switched.get("/readyz").json()
            assert {item["model_id"]: item["share"] for item in ready["model_coverage"]} == {
                old_model: 1.0,
                ready["model"]: 1.0,
            }
            assert post(switched, "/v1/dispatches", noise_blocks(112, count=2))["decision"] == "matched"
            engine = create_engine(url)
            with engine.connect() as connection:
                assert hnsw_index_valid(connection, ready["model"])
            engine.dispose()


def test_a_start_that_cannot_build_its_index_is_not_ready_rather_than_stuck(
    fresh_database: FreshDatabase, tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_id = read_metadata(tiny_checkpoint).model_id
    with fresh_database() as url:
        upgrade_to_head(url)
        writers, service = create_engine(url), create_engine(url, pool_size=1, max_overflow=0)
        with writers.connect() as writer:
            # A transaction writing fingerprints: a concurrent build must wait for it to end.
            writer.execute(text("LOCK TABLE fingerprints IN ROW EXCLUSIVE MODE"))
            started = time.monotonic()
            ensure_serving_index(service, model_id, 512, lock_timeout_s=0.5)
            assert time.monotonic() - started < 10, "gave up instead of waiting"
            assert "not built (OperationalError)" in caplog.text
            with service.connect() as connection:
                assert hnsw_index_valid(connection, model_id) is False, "the interrupted build's leftover"
                assert connection.execute(text("SHOW lock_timeout")).scalar_one() == "0", "not kept pooled"
            writer.rollback()
        assert ensure_hnsw_index(service, model_id, 512), "leftover dropped, index built"
        assert not ensure_hnsw_index(service, model_id, 512), "in place"
        with service.connect() as connection:
            assert hnsw_index_valid(connection, model_id)
        writers.dispose()
        service.dispose()
