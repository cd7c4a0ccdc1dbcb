"""Helpers for the app tests: encoded noise images and hand-made fingerprint vectors."""

from __future__ import annotations

import functools
import io
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import numpy as np
from PIL import Image
from sqlalchemy import Connection, text

from app.model_runner import BlockAnalysis
from models.runtime.local_features import LocalFeatures, extract

FreshDatabase = Callable[[], AbstractContextManager[str]]
"""The ``fresh_database`` fixture: a context manager yielding the URL of an empty, throw-away database."""


def noise_blocks(seed: int, count: int = 6, image_format: str = "PNG") -> list[bytes]:
    """``count`` encoded random-noise block images; the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(count):
        image = Image.fromarray(rng.integers(0, 256, (48, 96, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, format=image_format)
        blobs.append(buffer.getvalue())
    return blobs


def block_files(
    blobs: list[bytes], content_type: str = "image/png"
) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("blocks", (f"block{i}.png", blob, content_type)) for i, blob in enumerate(blobs)]


def unit_vectors(seed: int, count: int = 6, dim: int = 512) -> np.ndarray:
    """Random unit vectors: nearly orthogonal to those of other seeds (cosine ~ 0 +- 0.05)."""
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@functools.cache
def _noise_block_features(seed: int, count: int) -> tuple[LocalFeatures, ...]:
    return tuple(extract(Image.open(io.BytesIO(blob))) for blob in noise_blocks(seed, count))


def noise_block_features(seed: int, count: int = 6) -> list[LocalFeatures]:
    """The real local features of ``noise_blocks(seed, count)``."""
    return list(_noise_block_features(seed, count))


def block_analysis(seed: int, count: int = 6, fingerprints: np.ndarray | None = None) -> BlockAnalysis:
    """What the model runner makes of ``noise_blocks(seed)``: ``unit_vectors(seed)`` as fingerprints (or
    the given ones) and the real local features of those images, so geometry agrees with the vectors."""
    vectors = unit_vectors(seed, count) if fingerprints is None else fingerprints
    return BlockAnalysis(fingerprints=vectors, features=list(_noise_block_features(seed, count)))


def pick(analysis: BlockAnalysis, rows: list[int]) -> BlockAnalysis:
    """The blocks ``rows`` of ``analysis`` in that order (a partial or permuted capture)."""
    return BlockAnalysis(
        fingerprints=analysis.fingerprints[rows], features=[analysis.features[row] for row in rows]
    )


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (for servers a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, *, deadline_s: float = 120.0) -> None:
    """Poll ``condition`` until it holds (a background thread's work); fail after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def insert_receipts(
    connection: Connection, results: Sequence[str] = ("{}",), *, model_id: str = "model-a"
) -> tuple[uuid.UUID, list[int]]:
    """A pallet with one receipt per stored ``results`` (JSON text), in raw SQL that every schema revision
    accepts (migration tests run at old revisions, where the ORM's tables do not apply); its id and theirs."""
    pallet = uuid.uuid4()
    connection.execute(
        text(
            "INSERT INTO pallets (id, status, first_seen, last_seen) VALUES (:id, 'in_stock', now(), now())"
        ),
        {"id": pallet},
    )
    events = [
        connection.execute(
            text(
                "INSERT INTO events (pallet_id, kind, decision, votes, blocks_compared, model_id, result) "
                "VALUES (:pallet, 'receipt', 'registered', 0, 0, :model, CAST(:result AS jsonb)) RETURNING id"
            ),
            {"pallet": pallet, "model": model_id, "result": result},
        ).scalar_one()
        for result in results
    ]
    return pallet, events
