"""What one benchmark run measures: the full preset, the ``--quick`` preset and the CLI overrides."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

SECTIONS: tuple[str, ...] = ("embedding", "verification", "latency", "search", "growth")
EMBEDDING_VARIANTS: tuple[str, ...] = ("fp32", "channels_last", "bf16", "compile")
"""Bare-forward variants: plain fp32 (contiguous), channels_last (what the service runs), bf16 autocast on
top of channels_last, and ``torch.compile`` on top of channels_last."""

SERVICE_VARIANT = "channels_last"
"""The variant the service's ``Embedder`` runs, the baseline of the overhead ratio."""

EXTRAPOLATION_PALLETS: tuple[int, ...] = (1_000_000, 10_000_000)


@dataclass(frozen=True)
class BenchConfig:
    sections: tuple[str, ...] = SECTIONS
    galleries: tuple[int, ...] = (1_000, 10_000, 100_000)
    """Gallery sizes in pallets (six fingerprints each), measured in increasing order."""
    concurrency: tuple[int, ...] = (1, 4, 16)
    requests: int = 64
    """Timed dispatches per (gallery, concurrency) pair."""
    warmup_requests: int = 4
    embed_batch_sizes: tuple[int, ...] = (1, 6, 32)
    embed_seconds: float = 4.0
    """Minimum timed seconds per embedding measurement."""
    embedding_variants: tuple[str, ...] = ("fp32", "channels_last", "bf16")
    """``compile`` is opt-in: compiling the network takes several minutes on two cores."""
    verification_seconds: float = 4.0
    """Minimum timed seconds per extraction and matching measurement (``bench/verification.py``)."""
    real_pallets: int = 48
    """Synthetic pallets rendered and embedded: camera 1 enrols them, camera 2 queries them."""
    unknown_pallets: int = 16
    """More rendered pallets that are never enrolled: the identify breakdown's unknown dispatches."""
    words: bool = True
    """Store, index and search visual words as the service does when the checkpoint carries a vocabulary;
    ``False`` measures the service without the word stage (the served checkpoint copy has no vocabulary)."""
    search_queries: int = 200
    """Query blocks for recall and search time (real query blocks first, then perturbed fingerprints)."""
    exact_queries: int = 5
    """Queries timed through PostgreSQL's exact (sequential) scan."""
    ef_search_values: tuple[int, ...] = (10, 20, 40, 100, 200)
    hnsw_m_values: tuple[int, ...] = (8, 16, 32)
    variant_gallery: int = 10_000
    """Pallets of the side study of ``vector`` vs ``halfvec`` and of HNSW ``m``."""
    faiss: bool = True
    faiss_hnsw_max_pallets: int = 10_000
    """Largest gallery that also gets a FAISS HNSW index (about 5 minutes of build at 100k pallets on 2
    cores); FAISS flat runs at every size."""
    noise: float = 0.5
    """Norm of the gaussian noise added to each unit part of a base fingerprint (see ``gallery``)."""
    recall_k: int = 10
    seed: int = 0
    checkpoint: Path | None = None
    data_dir: Path | None = None
    plots_dir: Path | None = None
    threads: int | None = None
    api_processes: int = 1
    """API worker processes of the served app in the latency section (``palletreid serve --workers``)."""
    quick: bool = False

    def __post_init__(self) -> None:
        unknown = [name for name in self.sections if name not in SECTIONS]
        if unknown or not self.sections:
            raise ValueError(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
        unknown = [name for name in self.embedding_variants if name not in EMBEDDING_VARIANTS]
        if unknown:
            raise ValueError(f"unknown embedding variant(s) {unknown}; choose from {EMBEDDING_VARIANTS}")
        positive = {
            "galleries": self.galleries,
            "concurrency": self.concurrency,
            "embed batch sizes": self.embed_batch_sizes,
            "ef_search values": self.ef_search_values,
            "m values": self.hnsw_m_values,
        }
        for name, values in positive.items():
            if not values or min(values) < 1:
                raise ValueError(f"{name} must be a non-empty list of positive integers")
        if self.requests < 1 or self.real_pallets < 1 or self.search_queries < 1 or self.variant_gallery < 1:
            raise ValueError("requests, real pallets, search queries and variant gallery must be positive")
        if self.unknown_pallets < 1:
            raise ValueError("unknown pallets must be at least 1")
        if min(self.galleries) < self.real_pallets:
            raise ValueError(f"every gallery must hold at least the {self.real_pallets} real pallets")
        if self.api_processes < 1:
            raise ValueError("api processes must be at least 1")
        if self.noise < 0:
            raise ValueError("noise must not be negative")

    @property
    def needs_database(self) -> bool:
        return any(section in self.sections for section in ("latency", "search", "growth"))


QUICK = BenchConfig(
    galleries=(200,),
    concurrency=(1, 2),
    requests=3,
    warmup_requests=1,
    embed_batch_sizes=(1, 6),
    embed_seconds=0.2,
    embedding_variants=("fp32", "channels_last", "bf16"),
    verification_seconds=0.2,
    real_pallets=3,
    unknown_pallets=2,
    search_queries=12,
    exact_queries=2,
    ef_search_values=(10, 40),
    hnsw_m_values=(8, 16),
    variant_gallery=100,
    quick=True,
)


def preset(quick: bool) -> BenchConfig:
    return QUICK if quick else BenchConfig()


def with_overrides(base: BenchConfig, **overrides: object) -> BenchConfig:
    """``base`` with the given fields replaced (``None`` values are ignored)."""
    return replace(base, **{key: value for key, value in overrides.items() if value is not None})  # type: ignore[arg-type]
