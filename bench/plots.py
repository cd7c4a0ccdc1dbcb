"""PNG figures of a benchmark result (``docs/img/bench-*.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_embedding(result: dict[str, Any], path: Path) -> Path:
    rows = result["batches"]
    variants = sorted({variant for row in rows for variant in row["bare"]})
    series = ["service path", *(f"bare {variant}" for variant in variants)]
    figure, axes = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(series)
    for offset, name in enumerate(series):
        values = [
            row["service_images_per_s"]
            if name == "service path"
            else row["bare"].get(name[5:], {}).get("images_per_s", 0)
            for row in rows
        ]
        axes.bar([index + offset * width for index in range(len(rows))], values, width, label=name)
    axes.set_xticks(
        [index + 0.4 - width / 2 for index in range(len(rows))],
        [f"batch {row['batch_size']}" for row in rows],
    )
    axes.axhline(60, color="grey", linestyle="--", linewidth=1, label="target 60/s")
    axes.set_ylabel("block images / s")
    axes.set_title("Embedding throughput")
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_latency(galleries: list[dict[str, Any]], path: Path) -> Path:
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    levels = sorted({run["concurrency"] for row in galleries for run in row["runs"]})
    for level in levels:
        points = [
            (row["pallets"], run) for row in galleries for run in row["runs"] if run["concurrency"] == level
        ]
        sizes = [pallets for pallets, _ in points]
        left.plot(sizes, [run["p50_ms"] for _, run in points], marker="o", label=f"p50, concurrency {level}")
        left.plot(
            sizes,
            [run["p99_ms"] for _, run in points],
            marker="x",
            linestyle=":",
            label=f"p99, concurrency {level}",
        )
        right.plot(
            sizes, [run["pallets_per_s"] for _, run in points], marker="o", label=f"concurrency {level}"
        )
    for axes in (left, right):
        axes.set_xscale("log")
        axes.set_xlabel("gallery (pallets)")
        axes.legend(fontsize=7)
    left.set_ylabel("dispatch latency (ms)")
    left.set_title("HTTP dispatch latency (6 blocks)")
    right.set_ylabel("pallets / s")
    right.set_title("Dispatch throughput")
    return _save(figure, path)


def plot_recall(searches: list[dict[str, Any]], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4))
    for search in searches:
        sweep = search["pgvector"]["ef_sweep"]
        axes.plot(
            [r["p50_ms"] for r in sweep],
            [r["recall"] for r in sweep],
            marker="o",
            label=f"pgvector {search['pallets']} pallets",
        )
        faiss = search.get("faiss", {})
        if "hnsw" in faiss:
            sweep = faiss["hnsw"]["ef_sweep"]
            axes.plot(
                [r["p50_ms"] for r in sweep],
                [r["recall"] for r in sweep],
                marker="x",
                linestyle=":",
                label=f"FAISS HNSW {search['pallets']} pallets",
            )
    axes.axhline(0.99, color="grey", linestyle="--", linewidth=1, label="target 0.99")
    axes.set_xscale("log")
    axes.set_xlabel("query time per block, p50 (ms)")
    axes.set_ylabel("recall@10 vs exact")
    axes.set_title("HNSW: recall vs time (points: ef_search)")
    axes.legend(fontsize=7)
    return _save(figure, path)


def plot_growth(growth: dict[str, Any], path: Path) -> Path:
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    measured, projected = growth["measured"], growth["extrapolated"]
    for key, label in (("database_bytes", "database"), ("hnsw_index_bytes", "HNSW index (RAM to keep hot)")):
        left.plot(
            [r["pallets"] for r in measured],
            [r[key] / 2**30 for r in measured],
            marker="o",
            label=f"{label}, measured",
        )
        left.plot(
            [measured[-1]["pallets"], *(r["pallets"] for r in projected)],
            [measured[-1][key] / 2**30, *(r[key] / 2**30 for r in projected)],
            linestyle=":", marker="x", label=f"{label}, extrapolated",
        )  # fmt: skip
    left.set_ylabel("GiB")
    left.set_title("Storage")
    if all("identify_db_p50_ms" in r for r in projected) and projected:
        for key, label in (
            ("identify_db_p50_ms", "database identify p50"),
            ("http_p50_ms_concurrency_1", "HTTP dispatch p50"),
        ):
            if all(r.get(key) is not None for r in (*measured, *projected)):
                right.plot(
                    [r["pallets"] for r in measured],
                    [r[key] for r in measured],
                    marker="o",
                    label=f"{label}, measured",
                )
                right.plot(
                    [measured[-1]["pallets"], *(r["pallets"] for r in projected)],
                    [measured[-1][key], *(r[key] for r in projected)],
                    linestyle=":", marker="x", label=f"{label}, extrapolated",
                )  # fmt: skip
    right.set_ylabel("ms")
    right.set_title("Latency")
    for axes in (left, right):
        axes.set_xscale("log")
        axes.set_xlabel("gallery (pallets)")
        axes.legend(fontsize=7)
    return _save(figure, path)


def write_plots(result: dict[str, Any], directory: Path) -> list[Path]:
    """Every figure the result has data for, as ``bench-*.png`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if "embedding" in result:
        written.append(plot_embedding(result["embedding"], directory / "bench-embedding.png"))
    if "latency" in result and result["latency"]["galleries"]:
        written.append(plot_latency(result["latency"]["galleries"], directory / "bench-latency.png"))
    if "search" in result and result["search"]["galleries"]:
        written.append(plot_recall(result["search"]["galleries"], directory / "bench-recall.png"))
    if "growth" in result:
        written.append(plot_growth(result["growth"], directory / "bench-growth.png"))
    return written
