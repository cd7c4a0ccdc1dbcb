"""bf16 inference where the CPU computes bf16 natively, fp32 elsewhere; chosen at start, shown by /readyz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from bench.captures import render_pallets
from models.runtime.checkpoint import DEFAULT_CHECKPOINT
from models.runtime.images import decode_image
from models.runtime.inference import Embedder, cpu_has_native_bf16, resolve_precision

FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {extra}\n\nprocessor\t: 1\n"


def _cpuinfo(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / f"cpuinfo-{extra or 'plain'}"
    path.write_text(FLAGS.format(extra=extra))
    return path


@pytest.mark.parametrize(
    ("extra", "native"),
    [("amx_bf16 amx_tile", True), ("avx512f avx512_bf16", True), ("avx512f avx512_vnni", False), ("", False)],
)
def test_auto_picks_bf16_only_on_a_cpu_with_native_bf16(tmp_path: Path, extra: str, native: bool) -> None:
    cpuinfo = _cpuinfo(tmp_path, extra)
    assert cpu_has_native_bf16(cpuinfo) is native
    assert resolve_precision("auto", "cpu", cpuinfo) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", "cpu", cpuinfo) == "fp32"
    assert resolve_precision("bf16", "cpu", cpuinfo) == "bf16", "forced even where emulated"
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8")


def test_bf16_fingerprints_of_the_shipped_model_are_within_cosine_0_999_of_fp32() -> None:
    """Real synthetic block captures through the shipped model (runs on any CPU; emulated bf16 is slower)."""
    fp32 = Embedder.load(DEFAULT_CHECKPOINT, precision="fp32")
    bf16 = Embedder(fp32.model, fp32.metadata, precision="bf16")
    images = [
        decode_image(blob, max_pixels=10**8, name="test")
        for pallet in render_pallets(2, seed=5)
        for blob in (*pallet.enrol, *pallet.query)
    ]

    reference, reduced = fp32.embed(images, batch_size=12), bf16.embed(images, batch_size=12)

    assert reduced.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(reference * reduced, axis=1)
    assert cosines.min() >= 0.999, f"min cosine {cosines.min():.5f}"
    assert not np.array_equal(reference, reduced), "bf16 really ran"


def test_readyz_shows_the_precision_in_force(
    database_url: str, tiny_checkpoint: Path, make_settings: object
) -> None:
    settings = make_settings(database_url, tiny_checkpoint, model_precision="bf16")  # type: ignore[operator]
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["precision"] == "bf16"
