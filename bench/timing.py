"""Timing helpers: repeat a call for a minimum time, and summarise latencies."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rate:
    items_per_s: float
    ms_per_call: float
    calls: int


def measure_rate(
    call: Callable[[int], object], *, items_per_call: int, min_seconds: float, min_calls: int = 3
) -> Rate:
    """Run ``call(i)`` once untimed (warm-up), then until ``min_seconds`` and ``min_calls`` are reached."""
    call(0)
    calls = 0
    started = time.perf_counter()
    elapsed = 0.0
    while calls < min_calls or elapsed < min_seconds:
        call(calls + 1)
        calls += 1
        elapsed = time.perf_counter() - started
    return Rate(items_per_s=calls * items_per_call / elapsed, ms_per_call=1000 * elapsed / calls, calls=calls)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max in milliseconds."""
    values = np.asarray(seconds, dtype=np.float64) * 1000
    if values.size == 0:
        return {}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
        "mean_ms": round(float(values.mean()), 2),
        "max_ms": round(float(values.max()), 2),
    }
