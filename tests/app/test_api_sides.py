"""Side views instead of block crops: ``sides`` on ``POST /v1/receipts`` and ``/v1/dispatches``.

Side views are rendered by ``models.synth.sides`` with the block identities of the block generator and read
by the shipped block detector. Identification uses the shipped fingerprint model and its calibrated
decision parameters (its own database); the refusals use the tiny test model (``client``), whose
fingerprints do not matter there.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_testkit import FreshDatabase, block_files, noise_blocks
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.migrations import upgrade_to_head
from app.db.tables import BlockImage, Event, Fingerprint, IdempotencyKey, Pallet
from app.errors import ConfigurationError
from app.images.store import ImageStore
from app.main import create_app
from app.settings import Settings
from models.runtime.detector import (
    BLOCKS_PER_SIDE,
    CROP_SIZE,
    DEFAULT_DETECTOR,
    Detection,
    box_iou,
    load_detector,
    used_detections,
)
from models.synth import SynthConfig, render_pallet
from models.synth.sides import SideView, render_side

FAMILY = "chipsplat"
PALLET = 990_200
"""Far from every training pallet of the detector (500000-500999) and the fingerprint model."""
STRANGER = 990_201
CROPS_PALLET = 990_203
"""Received as block images (the block generator's crops), dispatched from side views (990_202 is one of the
pallets whose racks views lose most blocks: 22 inliers at side-view scale, 18 without)."""


@functools.cache
def side_view(pallet: int, side: int, background: str, size: tuple[int, int]) -> SideView:
    return render_side(0, pallet, side, FAMILY, background, size)


def receipt_views(pallet: int) -> list[SideView]:
    """Both sides at the receipt gate: 1280x720 in the yard."""
    return [side_view(pallet, side, "yard", (1280, 720)) for side in (0, 1)]


def dispatch_views(pallet: int) -> list[SideView]:
    """Both sides at the dispatch gate: another station (racks behind) with a 960x540 camera."""
    return [side_view(pallet, side, "racks", (960, 540)) for side in (0, 1)]


def side_files(
    blobs: list[bytes], content_type: str = "image/jpeg"
) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("sides", (f"side_{index}.jpg", blob, content_type)) for index, blob in enumerate(blobs)]


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


PLAIN_WALL = jpeg(Image.new("RGB", (1280, 720), (128, 132, 125)))
"""A side view with no pallet in it."""


@pytest.fixture(scope="module")
def shipped_client(
    fresh_database: FreshDatabase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The app with the shipped fingerprint model, its calibrated thresholds and the shipped detector."""
    with fresh_database() as url:
        upgrade_to_head(url)
        settings = Settings(database_url=url, model_threads=1, image_store=tmp_path_factory.mktemp("images"))
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield client


@pytest.fixture
def store(client: TestClient, tmp_path: Path) -> Iterator[ImageStore]:
    """A fresh image store for the app during this test."""
    app: Any = client.app
    previous = app.state.image_store
    app.state.image_store = ImageStore(tmp_path / "images")
    yield app.state.image_store
    app.state.image_store = previous


def stored_rows(session: Session) -> tuple[int, ...]:
    return tuple(
        session.scalar(select(func.count()).select_from(table)) or 0
        for table in (Pallet, Event, Fingerprint, BlockImage, IdempotencyKey)
    )


def post(client: TestClient, endpoint: str, views: list[SideView], **fields: str) -> dict[str, Any]:
    response = client.post(f"/v1/{endpoint}", files=side_files([view.jpeg for view in views]), data=fields)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_detections_match_the_truth(body: dict[str, Any], views: list[SideView]) -> None:
    """Per side: every true block found (IoU >= 0.5), and the position it became is its true position."""
    assert [side["side"] for side in body["detections"]] == list(range(len(views)))
    for side, view in zip(body["detections"], views, strict=True):
        assert (side["width"], side["height"]) == (view.width, view.height)
        used = [block for block in side["blocks"] if block["position"] is not None]
        assert len(used) == BLOCKS_PER_SIDE
        for block, truth in zip(used, view.blocks, strict=True):
            assert box_iou(tuple(block["box"]), truth.box) >= 0.5, (block, truth)
            assert block["position"] == truth.position
            assert 0 < block["confidence"] <= 1
            assert len(block["quad"]) == 4


def test_receipt_and_dispatch_from_side_views_identify_the_pallet(shipped_client: TestClient) -> None:
    receipt = post(shipped_client, "receipts", receipt_views(PALLET), site="DE-HAM-01")
    assert receipt["decision"] == "registered"
    assert receipt["detector"] == load_detector(DEFAULT_DETECTOR)[1].model_id
    assert_detections_match_the_truth(receipt, receipt_views(PALLET))

    dispatch = post(shipped_client, "dispatches", dispatch_views(PALLET), site="DE-HAM-01")
    assert (dispatch["decision"], dispatch["pallet_id"]) == ("matched", receipt["pallet_id"])
    assert dispatch["blocks_compared"] == 2 * BLOCKS_PER_SIDE
    assert dispatch["verification"]["band"] == "matched", dispatch["verification"]
    assert [block["position"] for block in dispatch["blocks"]] == list(range(6))
    assert all(block["pallet_id"] == receipt["pallet_id"] for block in dispatch["blocks"])
    assert_detections_match_the_truth(dispatch, dispatch_views(PALLET))

    stranger = post(shipped_client, "dispatches", dispatch_views(STRANGER))
    assert stranger["decision"] == "registered"
    assert stranger["pallet_id"] != receipt["pallet_id"]

    # The crops were stored as the event's block images, one per position, at the block captures' size.
    for position in range(6):
        image = shipped_client.get(f"/v1/events/{dispatch['event_id']}/blocks/{position}")
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(image.content)).size == CROP_SIZE
    assert shipped_client.get(f"/v1/events/{dispatch['event_id']}/blocks/6").status_code == 404


def test_a_pallet_received_from_block_images_is_dispatched_from_side_views(
    shipped_client: TestClient, fresh_database: FreshDatabase
) -> None:
    """The station that cuts crops and the one that shoots sides meet: block images keep their features at
    a side-view block's scale, which the side view's blocks are verified against."""
    config = SynthConfig(pallets=1, first_pallet=CROPS_PALLET, cameras=1, frames=1)
    crops = sorted(render_pallet(config, CROPS_PALLET, FAMILY), key=lambda capture: capture.block)
    response = shipped_client.post("/v1/receipts", files=block_files([capture.jpeg for capture in crops]))
    assert response.status_code == 201, response.text
    receipt = response.json()
    dispatch = post(shipped_client, "dispatches", dispatch_views(CROPS_PALLET))
    assert (dispatch["decision"], dispatch["pallet_id"]) == ("matched", receipt["pallet_id"])
    assert dispatch["verification"]["band"] == "matched", dispatch["verification"]
    app: Any = shipped_client.app
    events = [receipt["event_id"], dispatch["event_id"]]
    with app.state.session_factory() as session:
        scaled = func.count(Fingerprint.side_scale_features)
        per_event = select(Fingerprint.event_id, scaled).where(Fingerprint.event_id.in_(events))
        stored = {event: count for event, count in session.execute(per_event.group_by(Fingerprint.event_id))}
        kinds = select(Event.id, Event.from_side_views).where(Event.id.in_(events))
        sources = {event: from_side_views for event, from_side_views in session.execute(kinds)}
    assert stored == {receipt["event_id"]: 6, dispatch["event_id"]: 0}, "side-scale features: block images"
    assert sources == {receipt["event_id"]: False, dispatch["event_id"]: True}


def test_one_side_view_gives_its_three_blocks(client: TestClient, store: ImageStore) -> None:
    view = side_view(PALLET, 1, "floor", (1280, 720))
    body = post(client, "receipts", [view])
    assert body["blocks_compared"] == 3
    assert [block["position"] for block in body["detections"][0]["blocks"]] == [0, 1, 2]
    assert len(list(store.files())) == 3


def test_blocks_and_sides_together_are_422(client: TestClient, session: Session, store: ImageStore) -> None:
    files = [*block_files(noise_blocks(seed=60, count=6)), *side_files([receipt_views(PALLET)[0].jpeg])]
    response = client.post("/v1/receipts", files=files)
    assert response.status_code == 422, response.text
    assert response.json()["type"] == "invalid_request"
    assert "not both" in response.json()["detail"]
    assert stored_rows(session) == (0, 0, 0, 0, 0)
    assert list(store.files()) == []


def test_a_side_without_a_pallet_is_blocks_not_found_and_nothing_is_stored(
    client: TestClient, session: Session, store: ImageStore
) -> None:
    files = side_files([receipt_views(PALLET)[0].jpeg, PLAIN_WALL])
    response = client.post("/v1/receipts", files=files, headers={"Idempotency-Key": "wall-1"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"type", "detail"}
    assert body["type"] == "blocks_not_found"
    assert "sides[1]: 0 found" in body["detail"] and "sides[0]" not in body["detail"]
    assert stored_rows(session) == (0, 0, 0, 0, 0)
    assert list(store.files()) == []


def test_the_minimum_of_blocks_per_side_is_a_setting(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A side view cut so that only two of its blocks are whole: enough by default, not with 3 required."""
    view = receipt_views(PALLET)[0]
    right_edge = int((view.blocks[1].box[2] + view.blocks[2].box[0]) / 2)
    two_blocks = jpeg(view.image().crop((0, 0, right_edge, view.height)))
    settings: Any = client.app.state.settings  # type: ignore[attr-defined]
    monkeypatch.setattr(settings, "min_detected_blocks", 3)
    refused = client.post("/v1/receipts", files=side_files([two_blocks]))
    assert (refused.status_code, refused.json()["type"]) == (422, "blocks_not_found")
    assert "sides[0]: 2 found" in refused.json()["detail"]
    assert stored_rows(session) == (0, 0, 0, 0, 0)
    monkeypatch.setattr(settings, "min_detected_blocks", 2)
    accepted = client.post("/v1/receipts", files=side_files([two_blocks]))
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["blocks_compared"] == 2


def _encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("payloads", "status", "error_type"),
    [
        ([b""], 422, "invalid_image"),
        ([PLAIN_WALL[: len(PLAIN_WALL) // 2]], 422, "invalid_image"),
        ([_encoded(Image.new("RGB", (64, 36)), "BMP")], 415, "unsupported_image_type"),
        ([b"<svg xmlns='http://www.w3.org/2000/svg'/>"], 415, "unsupported_image_type"),
        ([PLAIN_WALL] * 3, 422, "invalid_request"),
    ],
    ids=["empty", "truncated-jpeg", "bmp", "svg", "three-sides"],
)
def test_bad_side_views_are_refused_like_block_images(
    client: TestClient, session: Session, payloads: list[bytes], status: int, error_type: str
) -> None:
    response = client.post("/v1/dispatches", files=side_files(payloads))
    assert response.status_code == status, response.text
    assert response.json()["type"] == error_type
    assert stored_rows(session) == (0, 0, 0, 0, 0)


def test_side_views_keep_the_size_limits_of_block_images(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings: Any = client.app.state.settings  # type: ignore[attr-defined]
    monkeypatch.setattr(settings, "max_image_pixels", 1280 * 720 - 1)
    response = client.post("/v1/receipts", files=side_files([PLAIN_WALL]))
    assert (response.status_code, response.json()["type"]) == (413, "image_too_large")
    assert "sides[0]" in response.json()["detail"]


def test_a_retry_with_the_same_key_replays_the_detections(client: TestClient, store: ImageStore) -> None:
    """The event keeps the detections with its result: the replay answers them too."""
    views = receipt_views(PALLET)
    headers = {"Idempotency-Key": "sides-1"}
    files = side_files([view.jpeg for view in views])
    first = client.post("/v1/receipts", files=files, headers=headers)
    again = client.post("/v1/receipts", files=files, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert first.json()["detections"] is not None
    # The same bytes sent as block images are another request under that key.
    as_blocks = client.post("/v1/receipts", files=block_files([view.jpeg for view in views]), headers=headers)
    assert (as_blocks.status_code, as_blocks.json()["type"]) == (409, "idempotency_conflict")


def test_block_uploads_have_no_detections(client: TestClient) -> None:
    body = client.post("/v1/receipts", files=block_files(noise_blocks(seed=61, count=2))).json()
    assert (body["detections"], body["detector"]) == (None, None)


def test_the_three_most_confident_detections_are_used_left_to_right() -> None:
    def at(x: float, confidence: float) -> Detection:
        return Detection(
            (x, 10.0, x + 20.0, 30.0), confidence, ((x, 10.0), (x + 20, 10.0), (x + 20, 30.0), (x, 30.0))
        )

    found = [at(0, 0.9), at(40, 0.35), at(80, 0.8), at(120, 0.6), at(160, 0.95)]
    assert [d.box[0] for d in used_detections(found)] == [0, 80, 160]
    assert used_detections(found[:2]) == found[:2]


def test_readiness_names_the_detector_and_openapi_documents_sides(client: TestClient) -> None:
    ready = client.get("/readyz").json()
    assert ready["detector"] == load_detector(DEFAULT_DETECTOR)[1].model_id
    spec = client.get("/openapi.json").json()
    for path in ("/v1/receipts", "/v1/dispatches"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        schema = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
        assert {"blocks", "sides"} <= set(schema["properties"])
        assert not {"blocks", "sides"} & set(schema.get("required", []))
        assert "blocks_not_found" in spec["paths"][path]["post"]["responses"]["422"]["description"]
    result = spec["components"]["schemas"]["MatchResult"]
    assert "detections" in result["properties"]
    assert any(example.get("detections") for example in result["examples"])


def test_the_readme_side_view_tour(shipped_client: TestClient) -> None:
    """README: a receipt from the sample side views, then a dispatch of the same pallet's block crops: the
    receipt's pallet is the best candidate (matched, or registered for review when the geometry falls
    short)."""
    samples = Path(__file__).resolve().parents[2] / "docs" / "samples" / "sides" / "pallet-s"
    sides = [path.read_bytes() for path in sorted(samples.glob("side_*.jpg"))]
    receipt = shipped_client.post("/v1/receipts", files=side_files(sides), data={"site": "DE-HAM-01"}).json()
    assert (receipt["decision"], receipt["blocks_compared"]) == ("registered", 6)
    assert [[block["position"] for block in side["blocks"]] for side in receipt["detections"]] == [
        [0, 1, 2],
        [3, 4, 5],
    ]
    crops = [path.read_bytes() for path in sorted((samples / "dispatch").glob("block*.jpg"))]
    dispatch = shipped_client.post("/v1/dispatches", files=block_files(crops, "image/jpeg")).json()
    assert dispatch["candidates"][0]["pallet_id"] == receipt["pallet_id"]
    assert dispatch["candidates"][0]["votes"] == 6
    if dispatch["decision"] == "matched":
        assert dispatch["pallet_id"] == receipt["pallet_id"]
    else:
        assert dispatch["review"] is True


@pytest.mark.parametrize("which", ["missing", "a fingerprint model"])
def test_an_unusable_detector_refuses_to_start(
    database_url: str,
    tiny_checkpoint: Path,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    which: str,
) -> None:
    """PALLETREID_DETECTOR_PATH is checked at start like the fingerprint model (the PCB file is refused by
    the detector's loader: its own format key)."""
    path = tmp_path / "missing.safetensors" if which == "missing" else tiny_checkpoint
    settings = make_settings(database_url, tiny_checkpoint, detector_path=path)
    with (
        pytest.raises(ConfigurationError, match="PALLETREID_DETECTOR_PATH"),
        TestClient(create_app(settings)),
    ):
        pass
