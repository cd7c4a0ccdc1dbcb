"""Impostor statistics of the geometric evidence: tail estimate, false-match rate, suggested thresholds.

Impostor inlier sums have a light, roughly exponential upper tail (most pairs of different blocks share a
handful of chance matches; a few share more). Rates far below ``1 / samples`` cannot be read off the
samples, so the tail above the 90th percentile is fitted with an exponential (the peaks-over-threshold
method with a shape of 0): ``P(X >= t) = 0.1 * exp(-(t - u) / m)``, where ``u`` is the 90th percentile
and ``m`` the mean excess over it. The observed rate and its one-sided 95 % upper bound are reported
beside the model, so a reader can see when the two disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MIN_SAMPLES = 50
"""Fewer impostor samples than this give no tail estimate and no suggested thresholds."""
TAIL_QUANTILE = 0.9
"""The tail fitted is the part above this quantile of the impostor samples."""
HISTOGRAM_BIN = 10
"""Width in inliers of one histogram bin."""


@dataclass(frozen=True)
class ExponentialTail:
    """``P(X >= t) = tail_share * exp(-(t - start) / mean_excess)`` for ``t >= start``."""

    start: float
    mean_excess: float
    tail_share: float = 1.0 - TAIL_QUANTILE

    @classmethod
    def fit(cls, samples: npt.ArrayLike) -> ExponentialTail | None:
        """The fitted tail, or ``None`` with fewer than :data:`MIN_SAMPLES` samples."""
        values = np.asarray(samples, dtype=np.float64)
        if len(values) < MIN_SAMPLES:
            return None
        start = float(np.quantile(values, TAIL_QUANTILE))
        excess = values[values > start] - start
        # a degenerate tail (all samples equal) still needs a positive scale: one inlier
        mean_excess = max(float(excess.mean()) if len(excess) else 0.0, 1.0)
        return cls(start=start, mean_excess=mean_excess)

    def rate_at(self, threshold: float) -> float:
        """Estimated share of impostors with at least ``threshold`` inliers."""
        if threshold <= self.start:
            return self.tail_share
        return self.tail_share * math.exp(-(threshold - self.start) / self.mean_excess)

    def threshold_for(self, rate: float) -> int:
        """The smallest whole inlier count whose estimated impostor rate is at most ``rate``."""
        if not 0.0 < rate < 1.0:
            raise ValueError("rate must lie in (0, 1)")
        if rate >= self.tail_share:
            return math.ceil(self.start)
        return math.ceil(self.start + self.mean_excess * math.log(self.tail_share / rate))


def observed_rate(samples: npt.ArrayLike, threshold: int) -> tuple[float | None, float | None]:
    """(share of samples at or above ``threshold``, one-sided 95 % upper bound of that share).

    The bound is exact (Clopper-Pearson); with no sample above, it is the "rule of three" ``~3 / n``.
    """
    values = np.asarray(samples)
    count = len(values)
    if count == 0:
        return None, None
    hits = int((values >= threshold).sum())
    if hits == count:
        return 1.0, 1.0
    return hits / count, _upper_bound_95(hits, count)


def _upper_bound_95(hits: int, count: int) -> float:
    """Smallest p with P(Binomial(count, p) <= hits) <= 0.05, by bisection."""
    low, high = hits / count, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if _binomial_cdf(hits, count, middle) > 0.05:
            low = middle
        else:
            high = middle
    return high


def _binomial_cdf(hits: int, count: int, p: float) -> float:
    log_p, log_q = math.log(p), math.log1p(-p)
    return sum(
        math.exp(
            math.lgamma(count + 1)
            - math.lgamma(k + 1)
            - math.lgamma(count - k + 1)
            + k * log_p
            + (count - k) * log_q
        )
        for k in range(hits + 1)
    )


def histogram(samples: npt.ArrayLike, *, upper: int) -> list[tuple[int, int | None, int]]:
    """(lower, upper, count) bins of :data:`HISTOGRAM_BIN` inliers from 0 to ``upper``, then one open bin."""
    values = np.asarray(samples, dtype=np.int64)
    edges = list(range(0, upper + HISTOGRAM_BIN, HISTOGRAM_BIN))
    bins: list[tuple[int, int | None, int]] = []
    for lower, next_lower in zip(edges, [*edges[1:], None], strict=True):
        inside = values >= lower if next_lower is None else (values >= lower) & (values < next_lower)
        bins.append((lower, next_lower, int(inside.sum())))
    return bins


def quantile(samples: npt.ArrayLike, q: float, *, min_samples: int) -> float | None:
    """The ``q`` quantile, or ``None`` when there are fewer than ``min_samples`` samples to support it."""
    values = np.asarray(samples, dtype=np.float64)
    return float(np.quantile(values, q)) if len(values) >= min_samples else None
