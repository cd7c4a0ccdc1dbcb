"""Runs the benchmark sections in order and assembles one JSON-serialisable result."""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sqlalchemy import create_engine, text

from app.db.embedded import embedded_postgres, server_settings
from app.db.migrations import upgrade_to_head
from app.db.session import throwaway_database
from app.matching.parameters import decision_parameters_in_force
from app.matching.repository import HNSW_M
from app.matching.service import MatchingConfig
from app.model_runner import BlockAnalysis, BlockWords, Later
from app.settings import Settings
from bench.captures import PalletImages, render_pallets
from bench.config import EXTRAPOLATION_PALLETS, BenchConfig
from bench.embedding import run_embedding
from bench.gallery import Gallery, perturbed_fingerprints
from bench.growth import run_growth
from bench.latency import http_dispatch_load, identify_breakdown, latency_targets, running_server
from bench.search import RECALL_TARGET, index_variants, run_search
from bench.verification import run_verification
from models.runtime.checkpoint import DEFAULT_CHECKPOINT, VOCABULARY_PREFIX, load_vocabulary, read_metadata
from models.runtime.images import decode_image
from models.runtime.inference import Embedder
from models.runtime.local_features import ExtractorSettings, LocalFeatures, extract
from models.runtime.thresholds import DecisionParameters
from models.runtime.visual_words import VisualVocabulary

logger = logging.getLogger(__name__)


@contextmanager
def scratch_database(server_url: str | None, data_dir: Path | None) -> Iterator[str]:
    """A new, empty database for the run, dropped afterwards.

    On ``server_url`` (a configured DATABASE_URL; its role needs CREATEDB) or, without one, on an embedded
    PostgreSQL in ``data_dir`` (default: a temporary directory). Never touches an existing database.
    """
    with ExitStack() as stack:
        if server_url is None:
            directory = data_dir or Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="palletreid-bench-"))
            )
            server_url = stack.enter_context(embedded_postgres(directory))
        yield stack.enter_context(throwaway_database(server_url, prefix="palletreid_bench"))


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "memory_bytes": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def database_info(database_url: str) -> dict[str, Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return {
                "postgresql": connection.execute(text("SHOW server_version")).scalar_one(),
                "pgvector": connection.execute(
                    text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                ).scalar_one(),
                **server_settings(database_url),
            }
    finally:
        engine.dispose()


def _embed_blocks(
    embedder: Embedder, pallets: list[PalletImages], camera: str, settings: Settings
) -> np.ndarray:
    """(pallets, 6, dim) fingerprints of every pallet's ``enrol`` or ``query`` captures."""
    images = [
        decode_image(blob, max_pixels=settings.max_image_pixels, name="bench")
        for pallet in pallets
        for blob in getattr(pallet, camera)
    ]
    vectors = embedder.embed(images, batch_size=settings.embed_batch_size)
    return vectors.reshape(len(pallets), -1, embedder.embedding_dim)


def _block_features(
    pallets: list[PalletImages], camera: str, settings: Settings, extractor: ExtractorSettings
) -> list[list[LocalFeatures]]:
    """Local features of every pallet's ``enrol`` or ``query`` blocks, decoded like the service does."""
    return [
        [
            extract(decode_image(blob, max_pixels=settings.max_image_pixels, name="bench"), extractor)
            for blob in getattr(pallet, camera)
        ]
        for pallet in pallets
    ]


def _analyses(
    fingerprints: np.ndarray, features: list[list[LocalFeatures]], vocabulary: VisualVocabulary | None
) -> list[BlockAnalysis]:
    """Each pallet's six blocks as ``ModelRunner.analyse`` hands them to the service (words with a
    vocabulary)."""
    return [
        BlockAnalysis(
            fingerprints=vectors,
            features=blocks,
            words=Later.ready(BlockWords.encode(vocabulary, blocks)) if vocabulary is not None else None,
        )
        for vectors, blocks in zip(fingerprints, features, strict=True)
    ]


def checkpoint_without_vocabulary(checkpoint: Path, directory: Path) -> Path:
    """A copy of ``checkpoint`` in ``directory`` without its visual-word vocabulary (same weights, model id
    and decision parameters): the service serving it runs no word stage."""
    metadata = read_metadata(checkpoint)
    state = {
        key: value
        for key, value in load_file(str(checkpoint)).items()
        if not key.startswith(VOCABULARY_PREFIX)
    }
    path = directory / checkpoint.name
    save_file(state, str(path), metadata=replace(metadata, vocabulary_id="").to_header())
    return path


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Every requested section; the returned dict is the JSON that ``palletreid bench`` prints."""
    settings = Settings()
    checkpoint = config.checkpoint or DEFAULT_CHECKPOINT
    started = time.perf_counter()
    embedder = Embedder.load(checkpoint, num_threads=config.threads, precision=settings.model_precision)
    # What the service would decide with for this checkpoint (refuses an uncalibrated one without thresholds).
    decision = decision_parameters_in_force(settings, embedder.metadata, checkpoint)
    vocabulary = load_vocabulary(checkpoint) if config.words else None
    config_dict = {
        key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(config).items()
    }
    result: dict[str, Any] = {
        "machine": machine_info(),
        "config": config_dict,
        "model": {
            "checkpoint": str(checkpoint),
            "model_id": embedder.model_id,
            "image_size": list(embedder.image_size),
            "vocabulary_id": vocabulary.vocabulary_id if vocabulary is not None else None,
        },
        "service_settings": {
            "embed_batch_size": settings.embed_batch_size,
            "model_precision": embedder.precision,
            "max_queued_requests": settings.max_queued_requests,
            "hnsw_ef_search": settings.hnsw_ef_search,
            "decision_parameters": {
                "source": decision.source,
                "overridden": list(decision.overridden),
                "thresholds": asdict(decision.parameters.thresholds),
                "rule": asdict(decision.parameters.rule),
            },
        },
        "targets": {},
        "durations_s": {},
    }
    pallets = render_pallets(config.real_pallets + config.unknown_pallets, seed=config.seed)

    if "embedding" in config.sections:
        section_started = time.perf_counter()
        blobs = [blob for pallet in pallets for blob in (*pallet.enrol, *pallet.query)]
        result["embedding"] = run_embedding(embedder, blobs, config, settings)
        result["targets"].update({f"embedding.{k}": v for k, v in result["embedding"]["targets"].items()})
        result["durations_s"]["embedding"] = round(time.perf_counter() - section_started, 1)

    if "verification" in config.sections:
        section_started = time.perf_counter()
        result["verification"] = run_verification(
            embedder,
            pallets,
            decision.parameters,
            settings,
            min_seconds=config.verification_seconds,
            vocabulary=vocabulary,
        )
        result["durations_s"]["verification"] = round(time.perf_counter() - section_started, 1)

    if config.needs_database:
        with ExitStack() as stack:
            database_url = stack.enter_context(scratch_database(settings.database_url, config.data_dir))
            served = checkpoint
            if vocabulary is None and read_metadata(checkpoint).vocabulary_id:
                directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="palletreid-bench-")))
                served = checkpoint_without_vocabulary(checkpoint, directory)
            _run_database_sections(
                config,
                settings,
                decision.parameters,
                embedder,
                vocabulary,
                served,
                pallets[: config.real_pallets],
                pallets[config.real_pallets :],
                database_url,
                result,
            )
    result["durations_s"]["total"] = round(time.perf_counter() - started, 1)
    return result


def _run_database_sections(
    config: BenchConfig,
    settings: Settings,
    decision: DecisionParameters,
    embedder: Embedder,
    vocabulary: VisualVocabulary | None,
    checkpoint: Path,
    pallets: list[PalletImages],
    unknown_pallets: list[PalletImages],
    database_url: str,
    result: dict[str, Any],
) -> None:
    """Gallery, search and latency sections; ``checkpoint`` is what the served API loads, ``pallets`` are
    enrolled and dispatched, ``unknown_pallets`` only dispatched in the identify breakdown."""
    upgrade_to_head(database_url)
    result["database"] = database_info(database_url)
    enrol = _embed_blocks(embedder, pallets, "enrol", settings)
    query = _embed_blocks(embedder, pallets, "query", settings)
    gallery = Gallery(
        database_url,
        model_id=embedder.model_id,
        num_parts=embedder.metadata.num_parts,
        real_fingerprints=enrol,
        real_features=_block_features(pallets, "enrol", settings, decision.geometry.extractor),
        noise=config.noise,
        seed=config.seed,
        vocabulary=vocabulary,
    )
    extractor = decision.geometry.extractor
    identify_queries = {
        "known": _analyses(query, _block_features(pallets, "query", settings, extractor), vocabulary),
        "unknown": _analyses(
            _embed_blocks(embedder, unknown_pallets, "query", settings),
            _block_features(unknown_pallets, "query", settings, extractor),
            vocabulary,
        ),
    }
    real_queries = query.reshape(-1, embedder.embedding_dim)[: config.search_queries]
    extra = perturbed_fingerprints(
        gallery.bases,
        config.search_queries - len(real_queries),
        num_parts=embedder.metadata.num_parts,
        noise=config.noise,
        rng=np.random.default_rng(config.seed + 1),
    )
    search_queries = np.concatenate([real_queries, extra])
    ef_values = tuple(sorted({*config.ef_search_values, settings.hnsw_ef_search}))
    payloads = [pallet.query for pallet in pallets]

    per_gallery: list[dict[str, Any]] = []
    searches: list[dict[str, Any]] = []
    latencies: list[dict[str, Any]] = []
    variants_done = False
    durations = {"seed": 0.0, "search": 0.0, "latency": 0.0}
    with ExitStack() as stack:
        server = None
        for size in sorted(config.galleries):
            section_started = time.perf_counter()
            row: dict[str, Any] = {"gallery": gallery.grow_to(size).as_dict()}
            durations["seed"] += time.perf_counter() - section_started
            if "search" in config.sections:
                section_started = time.perf_counter()
                searches.append(
                    run_search(
                        gallery,
                        search_queries,
                        k=config.recall_k,
                        ef_values=ef_values,
                        exact_queries=config.exact_queries,
                        with_faiss=config.faiss,
                        faiss_m=HNSW_M,
                        faiss_hnsw=size <= config.faiss_hnsw_max_pallets,
                    )
                )
                if not variants_done and (size >= config.variant_gallery or size == max(config.galleries)):
                    searches[-1]["index_variants"] = index_variants(
                        gallery,
                        search_queries,
                        pallets=config.variant_gallery,
                        k=config.recall_k,
                        m_values=config.hnsw_m_values,
                        ef_values=ef_values,
                    )
                    variants_done = True
                durations["search"] += time.perf_counter() - section_started
            if "latency" in config.sections:
                section_started = time.perf_counter()
                if server is None:
                    server = stack.enter_context(
                        running_server(
                            database_url, checkpoint, threads=config.threads, processes=config.api_processes
                        )
                    )
                runs = []
                for concurrency in config.concurrency:
                    logger.info("latency: %d pallets, concurrency %d", size, concurrency)
                    runs.append(
                        http_dispatch_load(
                            server,
                            payloads,
                            gallery.real_pallet_ids(),
                            concurrency=concurrency,
                            requests=max(config.requests, concurrency),
                            warmup=config.warmup_requests,
                        )
                    )
                breakdown = identify_breakdown(
                    database_url,
                    embedder,
                    payloads,
                    identify_queries,
                    settings,
                    MatchingConfig.from_settings(settings, decision),
                    repeats=max(config.requests // 2, 3),
                    vocabulary=vocabulary,
                    expected=gallery.real_pallet_ids(),
                )
                row["latency"] = {
                    "pallets": size,
                    "gallery": row["gallery"],
                    "api_processes": config.api_processes,
                    "runs": runs,
                    "breakdown": breakdown,
                    "server_rss_bytes": server.rss_bytes(),
                }
                latencies.append(row["latency"])
                durations["latency"] += time.perf_counter() - section_started
            per_gallery.append(row)

    if "search" in config.sections:
        result["search"] = {"ef_search_service": settings.hnsw_ef_search, "galleries": searches}
        largest = max(searches, key=lambda search: search["pallets"])
        service_row = next(
            r for r in largest["pgvector"]["ef_sweep"] if r["ef_search"] == settings.hnsw_ef_search
        )
        result["targets"]["search.recall_at_10"] = {
            "pallets": largest["pallets"],
            "ef_search": settings.hnsw_ef_search,
            "target": f">= {RECALL_TARGET:g}"
            + ("" if largest["pallets"] >= 100_000 else " (target is for 100000 pallets)"),
            "value": service_row["recall"],
            "met": service_row["recall"] >= RECALL_TARGET,
        }
    if "latency" in config.sections:
        result["latency"] = {"galleries": latencies}
        result["targets"].update({f"latency.{k}": v for k, v in latency_targets(latencies).items()})
    if "growth" in config.sections:
        result["growth"] = run_growth(per_gallery, extrapolate_to=EXTRAPOLATION_PALLETS)
    result["durations_s"].update({key: round(value, 1) for key, value in durations.items()})
