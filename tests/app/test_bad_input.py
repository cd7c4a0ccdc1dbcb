"""Hostile and broken input: every case is a 4xx ``{"type", "detail"}`` answer and nothing is stored."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from api_testkit import block_files, noise_blocks
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.deps import get_session
from app.db.session import unit_of_work
from app.db.tables import Event, Fingerprint, IdempotencyKey, Pallet
from app.main import create_app

Files = list[tuple[str, tuple[str, bytes, str]]]


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def _stored_rows(session: Session) -> tuple[int, int, int, int]:
    return tuple(  # type: ignore[return-value]
        session.scalar(select(func.count()).select_from(table)) or 0
        for table in (Pallet, Event, Fingerprint, IdempotencyKey)
    )


def _assert_error(response: object, status: int | tuple[int, ...], error_type: str | None = None) -> None:
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"type", "detail"}
    if error_type is not None:
        assert body["type"] == error_type, body


@pytest.fixture
def nothing_stored(session: Session) -> Iterator[None]:
    """Asserts after the test that the request wrote no row."""
    assert _stored_rows(session) == (0, 0, 0, 0)
    yield
    assert _stored_rows(session) == (0, 0, 0, 0)


GOOD_BLOCK = noise_blocks(seed=40, count=1)[0]


@pytest.mark.parametrize(
    ("payload", "status", "error_type"),
    [
        (b"", 422, "invalid_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 415, "unsupported_image_type"),
        (GOOD_BLOCK[: len(GOOD_BLOCK) // 2], 422, "invalid_image"),
        (_encoded(Image.new("RGB", (40, 20)), "JPEG")[:-200], 422, "invalid_image"),
        (_encoded(Image.new("RGB", (40, 20)), "BMP"), 415, "unsupported_image_type"),
        (_encoded(Image.new("RGB", (40, 20)), "TIFF"), 415, "unsupported_image_type"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415, "unsupported_image_type"),
        (_png_declaring(100_000, 100_000), 413, "image_too_large"),
        (_png_declaring(6_000, 5_000), 413, "image_too_large"),
    ],
    ids=[
        "empty",
        "png-garbage",
        "truncated-png",
        "truncated-jpeg",
        "bmp",
        "tiff",
        "svg",
        "bomb",
        "over-limit",
    ],
)
def test_broken_or_hostile_images_are_refused(
    client: TestClient, nothing_stored: None, payload: bytes, status: int, error_type: str
) -> None:
    files = [*block_files([GOOD_BLOCK]), ("blocks", ("bad.png", payload, "image/png"))]
    _assert_error(client.post("/v1/dispatches", files=files), status, error_type)


@pytest.mark.parametrize(
    ("data", "headers", "field"),
    [
        ({"pallet_id": "pallet-7"}, {}, "pallet_id"),
        ({"pallet_id": "0" * 40}, {}, "pallet_id"),
        ({"captured_at": "2026-13-45T99:00:00"}, {}, "captured_at"),
        ({"captured_at": "0001-01-01T00:00:00+14:00"}, {}, "captured_at"),
        ({"captured_at": "99999-01-01T00:00:00Z"}, {}, "captured_at"),
        ({"site": "x" * 201}, {}, "site"),
        ({"gate": "dock\x003"}, {}, "gate"),
        ({"external_ref": "ASN\n1"}, {}, "external_ref"),
        ({}, {"Idempotency-Key": ""}, "Idempotency-Key"),
        ({}, {"Idempotency-Key": "k" * 256}, "Idempotency-Key"),
    ],
)
def test_malformed_fields_are_422(
    client: TestClient, nothing_stored: None, data: dict[str, str], headers: dict[str, str], field: str
) -> None:
    response = client.post("/v1/receipts", files=block_files([GOOD_BLOCK]), data=data, headers=headers)
    _assert_error(response, 422, "validation_error")
    assert field in response.json()["detail"]


def test_oversize_form_field_is_refused_by_the_parser(client: TestClient, nothing_stored: None) -> None:
    response = client.post("/v1/receipts", files=block_files([GOOD_BLOCK]), data={"site": "x" * 200_000})
    _assert_error(response, 400, "http_error")


def test_non_file_blocks_are_422(client: TestClient, nothing_stored: None) -> None:
    _assert_error(client.post("/v1/receipts", data={"blocks": "abc"}), 422)


def test_unknown_pallet_is_404(client: TestClient, nothing_stored: None) -> None:
    response = client.post(
        "/v1/receipts",
        files=block_files([GOOD_BLOCK]),
        data={"pallet_id": "00000000-0000-4000-8000-000000000000"},
    )
    _assert_error(response, 404, "pallet_not_found")


def _cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "error_type"),
    [
        ("/v1/pallets?status=lost", "validation_error"),
        ("/v1/pallets?seen_since=last-tuesday", "validation_error"),
        ("/v1/pallets?seen_since=0001-01-01T00:00:00%2B14:00", "validation_error"),
        ("/v1/pallets?site=%00", "validation_error"),
        ("/v1/pallets?limit=0", "validation_error"),
        ("/v1/pallets?limit=100000", "validation_error"),
        (f"/v1/pallets?cursor={_cursor('[1, 2]')}", "invalid_cursor"),
        ("/v1/pallets?cursor=" + _cursor(r'["\u0000", "x"]'), "invalid_cursor"),
        ("/v1/events?kind=transfer", "validation_error"),
        ("/v1/events?since=2026-02-30", "validation_error"),
        (f"/v1/events?cursor={_cursor('[99999999999999999999999]')}", "invalid_cursor"),
        (f"/v1/events?cursor={_cursor('[-1]')}", "invalid_cursor"),
        (f"/v1/events?cursor={'A' * 5000}", "invalid_cursor"),
        ("/v1/pallets/not-a-uuid/events", "validation_error"),
    ],
)
def test_malformed_queries_are_422(client: TestClient, path: str, error_type: str) -> None:
    _assert_error(client.get(path), 422, error_type)


@pytest.fixture
def small_body_client(
    database_url: str,
    tiny_checkpoint: Path,
    make_settings: Callable[..., object],
    session_factory: Callable[[], Session],
) -> Iterator[TestClient]:
    """An app whose request-body limit is two 4 KB blocks (the limit is fixed when the app is made)."""
    settings = make_settings(database_url, tiny_checkpoint, max_blocks=2, max_image_bytes=4096)
    app = create_app(settings)  # type: ignore[arg-type]

    def test_session() -> Iterator[Session]:
        with unit_of_work(session_factory) as session:
            yield session

    app.dependency_overrides[get_session] = test_session
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_request_body_over_the_limit_is_413(small_body_client: TestClient, nothing_stored: None) -> None:
    huge = b"\x00" * 2_000_000
    response = small_body_client.post("/v1/receipts", files=[("blocks", ("a.png", huge, "image/png"))])
    _assert_error(response, 413, "request_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming too
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="blocks"; filename="a.png"\r\n\r\n'
        for _ in range(50):
            yield b"\x00" * 50_000

    streamed = small_body_client.post(
        "/v1/receipts", content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=xyz"}
    )
    _assert_error(streamed, 413, "request_too_large")


_valid_png = noise_blocks(seed=41, count=1)[0]
_valid_jpeg = noise_blocks(seed=41, count=1, image_format="JPEG")[0]


@st.composite
def _mangled_images(draw: st.DrawFn) -> bytes:
    """Valid images with flipped bytes, cut ends or spliced garbage, and raw random bytes."""
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "random"]))
    base = bytearray(draw(st.sampled_from([_valid_png, _valid_jpeg])))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "truncate":
        return bytes(base[: draw(st.integers(0, len(base) - 1))])
    if kind == "splice":
        at = draw(st.integers(0, len(base)))
        return bytes(base[:at] + draw(st.binary(min_size=1, max_size=64)) + base[at:])
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, min(len(base) - 1, 300)))  # the headers are where parsers break
        base[position] = draw(st.integers(0, 255))
    return bytes(base)


_text = st.one_of(st.none(), st.text(max_size=220))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    images=st.lists(_mangled_images(), min_size=0, max_size=14),
    site=_text,
    gate=_text,
    captured_at=st.one_of(
        st.none(), st.text(max_size=40), st.datetimes().map(lambda value: value.isoformat())
    ),
    content_type=st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "text/plain"]),
)
def test_multipart_fuzz_never_gets_a_server_error(
    client: TestClient,
    images: list[bytes],
    site: str | None,
    gate: str | None,
    captured_at: str | None,
    content_type: str,
) -> None:
    fields = {name: value for name, value in (("site", site), ("gate", gate), ("captured_at", captured_at))}
    data = {name: value for name, value in fields.items() if value is not None}
    response = client.post(
        "/v1/dispatches",
        files=[("blocks", (f"b{i}", image, content_type)) for i, image in enumerate(images)],
        data=data,
    )
    assert response.status_code < 500, response.text
    if response.status_code != 201:
        assert set(response.json()) == {"type", "detail"}
