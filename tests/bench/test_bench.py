"""``palletreid bench``: the quick preset end to end, and the pieces its figures rest on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import psutil
import pytest
from sqlalchemy import create_engine, text

from app.cli import main
from app.settings import Settings
from bench import search
from bench.config import QUICK, BenchConfig
from bench.gallery import perturbed_fingerprints
from bench.growth import log_fit, run_growth
from bench.latency import running_server


def test_quick_bench_runs_every_section_and_cleans_up(
    tiny_checkpoint: Path,
    database_server_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PALLETREID_DATABASE_URL", database_server_url)
    # fp32 everywhere: the random-weight model's fingerprints of noise images are ~0.99 alike, and bf16
    # rounding turns some of them into exact ties whose order the exact searches may break differently.
    monkeypatch.setenv("PALLETREID_MODEL_PRECISION", "fp32")
    # The random-weight test model carries no calibrated decision parameters: the service needs thresholds.
    for name, value in (("BLOCK_THRESHOLD", "0.995"), ("MIN_VOTES", "3"), ("SCORE_THRESHOLD", "0.995")):
        monkeypatch.setenv(f"PALLETREID_{name}", value)
    plots = tmp_path / "plots"
    output = tmp_path / "bench.json"

    code = main(
        [
            "bench",
            "--quick",
            "--checkpoint",
            str(tiny_checkpoint),
            "--plots",
            str(plots),
            "--output",
            str(output),
        ]
    )

    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(output.read_text()) == result
    assert result["model"]["image_size"] == [32, 64]

    embedding = result["embedding"]
    assert [row["batch_size"] for row in embedding["batches"]] == list(QUICK.embed_batch_sizes)
    for row in embedding["batches"]:
        assert row["service_images_per_s"] > 0
        assert set(row["bare"]) == set(QUICK.embedding_variants)
        assert row["service_vs_bare"] > 0

    (searched,) = result["search"]["galleries"]
    assert searched["pallets"] == QUICK.galleries[0]
    assert searched["fingerprints"] == 6 * QUICK.galleries[0]
    sweep = searched["pgvector"]["ef_sweep"]
    assert [row["ef_search"] for row in sweep] == sorted({*QUICK.ef_search_values, Settings().hnsw_ef_search})
    assert all(0.0 <= row["recall"] <= 1.0 for row in sweep)
    # PostgreSQL's exact scan and the numpy ground truth agree: both see exactly the seeded gallery.
    assert searched["pgvector"]["exact_scan"]["agreement_with_numpy"] == 1.0
    assert searched["faiss"]["flat"]["recall"] == 1.0
    variant_types = {(v["type"], v["m"]) for v in searched["index_variants"]["variants"]}
    assert variant_types == {("halfvec", m) for m in QUICK.hnsw_m_values} | {("vector", 16)}

    (latency,) = result["latency"]["galleries"]
    assert [run["concurrency"] for run in latency["runs"]] == list(QUICK.concurrency)
    for run in latency["runs"]:
        assert run["failed"] == 0
        assert run["requests"] >= QUICK.requests
        assert run["p50_ms"] <= run["p99_ms"]
        assert run["pallets_per_s"] > 0
    assert latency["breakdown"]["bound_by"] in {"network", "database"}
    round_trips = latency["breakdown"]["round_trips"]
    for form in ("knn_per_block", "knn_one_statement", "features_per_capture", "features_one_statement"):
        assert round_trips[form]["p50_ms"] > 0
    assert round_trips["knn_speedup_p50"] > 0
    assert {"shared_buffers", "effective_cache_size", "maintenance_work_mem"} <= set(result["database"])
    assert result["service_settings"]["model_precision"] == "fp32"

    growth = result["growth"]
    assert [row["pallets"] for row in growth["extrapolated"]] == [1_000_000, 10_000_000]
    assert growth["extrapolated"][1]["database_bytes"] > growth["extrapolated"][0]["database_bytes"]
    assert growth["assumptions"]

    assert {"embedding.service_images_per_s", "search.recall_at_10", "latency.p50_ms_concurrency_1"} <= set(
        result["targets"]
    )
    assert sorted(path.name for path in plots.iterdir()) == [
        "bench-embedding.png",
        "bench-growth.png",
        "bench-latency.png",
        "bench-recall.png",
    ]
    engine = create_engine(database_server_url)
    with engine.connect() as connection:
        leftovers = connection.execute(
            text("SELECT count(*) FROM pg_database WHERE datname LIKE 'palletreid_bench_%'")
        ).scalar_one()
    engine.dispose()
    assert leftovers == 0


def test_perturbed_fingerprints_are_unit_norm_per_part_like_the_model() -> None:
    rng = np.random.default_rng(1)
    bases = rng.standard_normal((5, 512)).astype(np.float32)
    bases = (
        bases.reshape(5, 4, 128) / np.linalg.norm(bases.reshape(5, 4, 128), axis=2, keepdims=True)
    ).reshape(5, 512) / 2

    noisy = perturbed_fingerprints(bases, 50, num_parts=4, noise=0.5, rng=np.random.default_rng(2))
    exact = perturbed_fingerprints(bases, 50, num_parts=4, noise=0.0, rng=np.random.default_rng(2))

    assert noisy.shape == (50, 512)
    np.testing.assert_allclose(np.linalg.norm(noisy.reshape(50, 4, 128), axis=2), 0.5, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(noisy, axis=1), 1.0, rtol=1e-5)
    # Without noise every part is a part of some base at the same position.
    base_parts = bases.reshape(5, 4, 128)
    for row in exact.reshape(50, 4, 128):
        for position in range(4):
            assert np.isclose(base_parts[:, position] @ row[position], 0.25, atol=1e-5).any()
    # Noise of norm 0.5 leaves a part at cosine ~ 1/sqrt(1.25) to its base.
    part_cosines = np.einsum("npd,npd->np", noisy.reshape(50, 4, 128), exact.reshape(50, 4, 128)) * 4
    assert abs(part_cosines.mean() - 1 / math.sqrt(1.25)) < 0.05


def test_exact_top_k_matches_brute_force_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "GROUND_TRUTH_CHUNK_ROWS", 7)
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((50, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((4, 16)).astype(np.float32)

    found = search.exact_top_k(vectors.astype(np.float16), queries, 5)

    scores = queries.astype(np.float16).astype(np.float32) @ vectors.astype(np.float16).astype(np.float32).T
    expected = np.argsort(-scores, axis=1)[:, :5] + 1
    assert [set(row) for row in found.tolist()] == [set(row) for row in expected.tolist()]
    assert search.recall(expected.tolist(), found) == 1.0
    assert search.recall([[1, 2, 3, 4, 5]] * 4, found) < 1.0


def test_growth_fits_and_extrapolates_linearly_in_size() -> None:
    a, b = log_fit([1_000, 10_000, 100_000], [2 + 3 * math.log(n) for n in (1_000, 10_000, 100_000)])
    assert a == pytest.approx(2) and b == pytest.approx(3)
    assert log_fit([1_000, 100_000], [30.0, 10.0]) == (20.0, 0.0)

    def row(pallets: int, db_ms: float) -> dict[str, object]:
        return {
            "gallery": {
                "pallets": pallets,
                "fingerprints": 6 * pallets,
                "heap_bytes": 100 * pallets,
                "hnsw_index_bytes": 200 * pallets,
                "database_bytes": 1_000_000 + 400 * pallets,
                "index_build_s": pallets / 1000,
            },
            "latency": {
                "runs": [{"concurrency": 1, "p50_ms": 100 + db_ms}],
                "breakdown": {"identify_db": {"p50_ms": db_ms}},
            },
        }

    growth = run_growth(
        [row(1_000, 10 + math.log(1_000)), row(100_000, 10 + math.log(100_000))], extrapolate_to=[1_000_000]
    )

    (projected,) = growth["extrapolated"]
    assert growth["bytes_per_pallet"]["database_bytes"] == pytest.approx(400)
    assert projected["database_bytes"] == 1_000_000 + 400 * 1_000_000
    assert projected["hnsw_index_bytes"] == 200 * 1_000_000
    assert projected["identify_db_p50_ms"] == pytest.approx(10 + math.log(1_000_000), abs=0.01)
    assert projected["http_p50_ms_concurrency_1"] == pytest.approx(110 + math.log(1_000_000), abs=0.01)
    assert projected["index_build_s"] > 10 * 100


def test_config_rejects_what_cannot_be_measured() -> None:
    with pytest.raises(ValueError, match="section"):
        BenchConfig(sections=("speed",))
    with pytest.raises(ValueError, match="real pallets"):
        BenchConfig(galleries=(10,), real_pallets=48)
    with pytest.raises(ValueError, match="variant"):
        BenchConfig(embedding_variants=("int8",))
    with pytest.raises(ValueError, match="api processes"):
        BenchConfig(api_processes=0)


def test_the_served_api_runs_in_the_requested_number_of_processes(
    tiny_checkpoint: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``--api-processes`` starts: uvicorn workers sharing the cores, all counted in the memory."""
    for name, value in (("BLOCK_THRESHOLD", "0.995"), ("MIN_VOTES", "3"), ("SCORE_THRESHOLD", "0.995")):
        monkeypatch.setenv(f"PALLETREID_{name}", value)
    with running_server(database_url, tiny_checkpoint, threads=None, processes=2) as server:
        workers = psutil.Process(server.pid).children()
        assert len([w for w in workers if "spawn_main" in " ".join(w.cmdline())]) == 2
        own = psutil.Process(server.pid).memory_info().rss
        rss = server.rss_bytes()
        assert rss is not None and rss > own


def test_cli_rejects_bad_lists(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--galleries", "1000,lots"])
    assert exit_info.value.code == 2
    assert "comma-separated integers" in capsys.readouterr().err
