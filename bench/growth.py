"""Growth: how disk, memory and latency scale with the gallery, extrapolated past the measured sizes.

Models (fitted to the measured galleries, written into the result as assumptions):
* disk and index size grow linearly with pallets (bytes per pallet from the two extreme measured sizes);
* HNSW search time grows like ``a + b*ln(N)`` while the index stays in RAM (least squares over the sizes);
* HNSW build time grows like ``N*ln(N)``;
* an HTTP dispatch is the measured one at the largest gallery plus the extra database identification time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ASSUMPTIONS: tuple[str, ...] = (
    "six fingerprints per pallet, one model; every fingerprint stays searchable (no retention policy)",
    "heap, HNSW index and database size grow linearly in pallets (slope between the smallest and largest "
    "measured galleries)",
    "HNSW query time grows like a + b*ln(N) as long as the whole index is in RAM (shared_buffers or page "
    "cache); once it is not, queries read pages from disk and these latency figures no longer hold",
    "HNSW build time grows like N*ln(N) (only for a rebuild; the service inserts incrementally)",
    "an HTTP dispatch costs the measured one at the largest gallery plus the extra database identification "
    "time; the network forward does not depend on the gallery",
    "same machine (2 CPU cores) and the same HNSW parameters (m, ef_construction, ef_search)",
)


def log_fit(sizes: Sequence[int], values: Sequence[float]) -> tuple[float, float]:
    """(a, b) of ``value = a + b*ln(size)``; with one size, or a falling fit (noise), the mean and slope 0."""
    if len(set(sizes)) >= 2:
        slope, intercept = np.polyfit(np.log(np.asarray(sizes, dtype=np.float64)), np.asarray(values), 1)
        if slope >= 0:
            return float(intercept), float(slope)
    return float(np.mean(values)), 0.0


def _per_pallet(rows: Sequence[dict[str, Any]], key: str) -> float:
    first, last = rows[0], rows[-1]
    if last["pallets"] == first["pallets"]:
        return float(last[key]) / last["pallets"]
    return (float(last[key]) - float(first[key])) / (last["pallets"] - first["pallets"])


def run_growth(per_gallery: Sequence[dict[str, Any]], *, extrapolate_to: Sequence[int]) -> dict[str, Any]:
    """Measured sizes and timings per gallery, and their extrapolation to ``extrapolate_to`` pallets."""
    galleries = sorted(per_gallery, key=lambda row: row["gallery"]["pallets"])
    stats = [row["gallery"] for row in galleries]
    sizes = [row["pallets"] for row in stats]
    measured = []
    for row in galleries:
        entry: dict[str, Any] = {
            key: row["gallery"][key]
            for key in (
                "pallets",
                "fingerprints",
                "heap_bytes",
                "hnsw_index_bytes",
                "database_bytes",
                "index_build_s",
            )
        }
        for key in ("words_index_bytes", "words_index_build_s"):
            if row["gallery"].get(key) is not None:
                entry[key] = row["gallery"][key]
        if "latency" in row:
            single = next((run for run in row["latency"]["runs"] if run["concurrency"] == 1), None)
            entry["http_p50_ms_concurrency_1"] = single["p50_ms"] if single else None
            entry["identify_db_p50_ms"] = row["latency"]["breakdown"]["identify_db"]["p50_ms"]
            entry["server_rss_bytes"] = row["latency"].get("server_rss_bytes")
        measured.append(entry)

    bytes_per_pallet = {
        key: _per_pallet(stats, key) for key in ("heap_bytes", "hnsw_index_bytes", "database_bytes")
    }
    largest = measured[-1]
    fits: dict[str, tuple[float, float]] = {}
    if all(entry.get("identify_db_p50_ms") is not None for entry in measured):
        fits["identify_db_p50_ms"] = log_fit(sizes, [entry["identify_db_p50_ms"] for entry in measured])

    projections = []
    for pallets in extrapolate_to:
        scale = pallets - largest["pallets"]
        projection: dict[str, Any] = {
            "pallets": pallets,
            "fingerprints": pallets * 6,
            "database_bytes": round(largest["database_bytes"] + scale * bytes_per_pallet["database_bytes"]),
            "hnsw_index_bytes": round(
                largest["hnsw_index_bytes"] + scale * bytes_per_pallet["hnsw_index_bytes"]
            ),
            "index_build_s": round(
                largest["index_build_s"]
                * pallets
                / largest["pallets"]
                * math.log(pallets)
                / math.log(largest["pallets"]),
                1,
            ),
        }
        if "identify_db_p50_ms" in fits:
            intercept, slope = fits["identify_db_p50_ms"]
            db_ms = intercept + slope * math.log(pallets)
            projection["identify_db_p50_ms"] = round(db_ms, 2)
            if largest.get("http_p50_ms_concurrency_1") is not None:
                projection["http_p50_ms_concurrency_1"] = round(
                    largest["http_p50_ms_concurrency_1"] + db_ms - largest["identify_db_p50_ms"], 2
                )
        projections.append(projection)
    return {
        "measured": measured,
        "bytes_per_pallet": {key: round(value, 1) for key, value in bytes_per_pallet.items()},
        "fits": {key: {"a": round(a, 4), "b_per_ln_pallets": round(b, 4)} for key, (a, b) in fits.items()},
        "extrapolated": projections,
        "assumptions": list(ASSUMPTIONS),
    }
