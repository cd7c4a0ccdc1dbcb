"""Cost of the geometric stage: local-feature extraction per block, matching per block pair, and the whole
stage per dispatch, through the service's own code.

Extraction is :func:`models.runtime.local_features.extract` on images decoded by the service's loader, with
the model's extractor settings; matching is :func:`~models.runtime.local_features.count_inliers`. Per
dispatch, the service's :class:`~app.model_runner.ModelRunner` feature pool extracts the six query blocks
(as ``ModelRunner.analyse`` does) and :func:`~models.runtime.voting.decide_verified` checks the candidates
with that pool as its executor, as ``app.matching.service`` does. The network's neighbours come from an exact
in-memory search here (the database search is timed by the latency section), so the figures are the stage's
own cost. Half of the rendered pallets are enrolled; dispatches of the other half are unknown pallets, which
check the most candidates (the stage's worst case).

With the checkpoint's visual-word vocabulary, the feature pool encodes each block's words right after its
extraction (as ``ModelRunner.analyse``) and the rule gets its word candidates as the service gives them
(the ``word_top_k`` blocks sharing the most words per query block, exact here instead of the words' HNSW
index, ``word_shortlist_size`` pallets ranked by word pairing); every dispatch is then also verified without
them, back to back, so the word candidates' extra geometric checks are a ratio within one run.

Every figure is given in wall-clock time and in CPU time of the process (``time.process_time``, all threads):
on a shared machine the wall clock includes waiting for the cores, the CPU time does not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from app.model_runner import ModelRunner
from app.settings import Settings
from bench.captures import PalletImages
from bench.timing import Rate, latency_summary, measure_rate
from models.runtime.images import decode_image
from models.runtime.inference import Embedder
from models.runtime.local_features import LocalFeatures, count_inliers, extract
from models.runtime.thresholds import DecisionParameters, GeometryParameters
from models.runtime.visual_words import SparseWords, VisualVocabulary, word_similarities
from models.runtime.voting import (
    CaptureFeatures,
    Neighbour,
    WordCandidate,
    decide_verified,
    rank_word_candidates,
    shortlist,
    unit_rows,
)

logger = logging.getLogger(__name__)


def _decode(blobs: Sequence[bytes], settings: Settings) -> list[Image.Image]:
    return [decode_image(blob, max_pixels=settings.max_image_pixels, name="bench") for blob in blobs]


def run_verification(
    embedder: Embedder,
    pallets: Sequence[PalletImages],
    decision: DecisionParameters,
    settings: Settings,
    *,
    min_seconds: float,
    vocabulary: VisualVocabulary | None = None,
) -> dict[str, Any]:
    """Extraction ms/block, matching ms/pair (same block, different pallets) and the stage per dispatch
    (with and without the word candidates when there is a ``vocabulary``)."""
    if len(pallets) < 2:
        raise ValueError("the verification bench needs at least two pallets (one enrolled, one unknown)")
    geometry = decision.geometry
    enrol = [_decode(p.enrol, settings) for p in pallets]
    query = [_decode(p.query, settings) for p in pallets]
    blocks = [image for images in (*enrol, *query) for image in images]

    extraction, extraction_cpu_ms = _timed(
        lambda i: extract(blocks[i % len(blocks)], geometry.extractor), min_seconds
    )
    enrol_features = [[extract(image, geometry.extractor) for image in images] for images in enrol]
    query_features = [[extract(image, geometry.extractor) for image in images] for images in query]
    genuine_pairs = [
        (query_features[p][b], enrol_features[p][b])
        for p in range(len(pallets))
        for b in range(len(enrol[p]))
    ]
    impostor_pairs = [
        (query_features[p][b], enrol_features[(p + 1) % len(pallets)][b])
        for p in range(len(pallets))
        for b in range(len(enrol[p]))
    ]
    matching = {
        name: _matching(pairs, decision, min_seconds)
        for name, pairs in (("same_block", genuine_pairs), ("different_pallets", impostor_pairs))
    }

    runner = ModelRunner(embedder, batch_size=settings.embed_batch_size)
    try:
        dispatch = _dispatches(runner, embedder, enrol, query, enrol_features, decision, vocabulary)
    finally:
        runner.close()
    return {
        "extractor": {
            "working_long_side": geometry.extractor.working_long_side,
            "max_features": geometry.extractor.max_features,
        },
        "extract_ms_per_block": round(extraction.ms_per_call, 2),
        "extract_cpu_ms_per_block": round(extraction_cpu_ms, 2),
        "extract_blocks_per_s": round(extraction.items_per_s, 1),
        "match_ms_per_pair": {name: figures["ms_per_pair"] for name, figures in matching.items()},
        "match_cpu_ms_per_pair": {name: figures["cpu_ms_per_pair"] for name, figures in matching.items()},
        "match_inliers": {name: figures["inliers"] for name, figures in matching.items()},
        "vocabulary_id": vocabulary.vocabulary_id if vocabulary is not None else None,
        "dispatch": dispatch,
    }


def _matching(
    pairs: Sequence[tuple[LocalFeatures, LocalFeatures]], decision: DecisionParameters, min_seconds: float
) -> dict[str, Any]:
    matcher = decision.geometry.matcher
    rate, cpu_ms = _timed(lambda i: count_inliers(*pairs[i % len(pairs)], matcher), min_seconds)
    inliers = np.array([count_inliers(query, stored, matcher) for query, stored in pairs])
    return {
        "ms_per_pair": round(rate.ms_per_call, 3),
        "cpu_ms_per_pair": round(cpu_ms, 3),
        "inliers": {
            "median": float(np.median(inliers)),
            "min": int(inliers.min()),
            "max": int(inliers.max()),
        },
    }


def _timed(call: Callable[[int], object], min_seconds: float) -> tuple[Rate, float]:
    """Wall-clock rate of ``call`` and its CPU milliseconds per call (the warm-up call included in both)."""
    started = time.process_time()
    rate = measure_rate(call, items_per_call=1, min_seconds=min_seconds)
    return rate, 1000 * (time.process_time() - started) / (rate.calls + 1)


def _dispatches(
    runner: ModelRunner,
    embedder: Embedder,
    enrol: Sequence[Sequence[Image.Image]],
    query: Sequence[Sequence[Image.Image]],
    enrol_features: Sequence[Sequence[LocalFeatures]],
    decision: DecisionParameters,
    vocabulary: VisualVocabulary | None,
) -> dict[str, Any]:
    """Every pallet dispatched once: the first half enrolled (known), the rest unknown."""
    enrolled = max(1, len(enrol) // 2)
    gallery = {
        index: unit_rows(embedder.embed(list(enrol[index]))).astype(np.float64) for index in range(enrolled)
    }
    rows = np.concatenate([gallery[index] for index in range(enrolled)])
    owners = [index for index in range(enrolled) for _ in range(len(gallery[index]))]
    geometry, rule = decision.geometry, decision.rule
    stored_words = (
        {
            index: [vocabulary.encode(features) for features in enrol_features[index]]
            for index in range(enrolled)
        }
        if vocabulary is not None
        else {}
    )
    modes = ("words", "no_words") if vocabulary is not None else ("no_words",)
    parts = ("extract", "verify", "stage", "stage_cpu")
    timings: dict[str, dict[str, list[float]]] = {
        kind: {
            **{part: [] for part in parts},
            **({"verify_no_words": [], "stage_no_words": []} if vocabulary is not None else {}),
        }
        for kind in ("known", "unknown")
    }
    outcomes: dict[str, dict[str, dict[str, int]]] = {
        kind: {mode: {} for mode in modes} for kind in ("known", "unknown")
    }
    checked: dict[str, dict[str, list[int]]] = {
        kind: {mode: [] for mode in modes} for kind in ("known", "unknown")
    }

    def local(image: Image.Image) -> tuple[LocalFeatures, SparseWords | None]:
        features = extract(image, geometry.extractor)
        return features, vocabulary.encode(features) if vocabulary is not None else None

    for index, images in enumerate(query):
        kind = "known" if index < enrolled else "unknown"
        fingerprints = unit_rows(embedder.embed(list(images))).astype(np.float64)
        similarities = fingerprints @ rows.T
        nearest = np.argsort(-similarities, axis=1, kind="stable")[:, : rule.top_k]
        neighbours = [
            [Neighbour(pallet=owners[j], similarity=float(row[j])) for j in columns]
            for row, columns in zip(similarities, nearest, strict=True)
        ]
        candidates = shortlist(neighbours, rule.shortlist_size)
        started, cpu_started = time.perf_counter(), time.process_time()
        blocks = list(runner.feature_pool.map(local, images))
        features = [block_features for block_features, _ in blocks]
        words = [block_words for _, block_words in blocks if block_words is not None]
        extracted = time.perf_counter()
        for mode in modes if index % 2 == 0 else modes[::-1]:
            verify_started = time.perf_counter()
            verdict = decide_verified(
                neighbours,
                fingerprints,
                CaptureFeatures(features),
                {pallet: [gallery[pallet]] for pallet in candidates},
                lambda pallet, _capture: CaptureFeatures(enrol_features[pallet]),
                decision.thresholds,
                geometry,
                executor=runner.feature_pool,
                word_candidates=(
                    partial(_word_candidates, words, stored_words, geometry) if mode == "words" else None
                ),
            )
            finished, cpu_finished = time.perf_counter(), time.process_time()
            if mode == modes[0]:
                timings[kind]["stage_cpu"].append(cpu_finished - cpu_started)
                timings[kind]["extract"].append(extracted - started)
                timings[kind]["verify"].append(finished - verify_started)
                timings[kind]["stage"].append(extracted - started + finished - verify_started)
            else:
                timings[kind]["verify_no_words"].append(finished - verify_started)
                timings[kind]["stage_no_words"].append(extracted - started + finished - verify_started)
            outcome = verdict.outcome.value
            outcomes[kind][mode][outcome] = outcomes[kind][mode].get(outcome, 0) + 1
            checked[kind][mode].append(len(verdict.checked))
    summary: dict[str, Any] = {"enrolled_pallets": enrolled}
    for kind in ("known", "unknown"):
        figures: dict[str, Any] = {
            "dispatches": len(timings[kind]["stage"]),
            "outcomes": outcomes[kind][modes[0]],
            **{f"{part}_ms": latency_summary(values) for part, values in timings[kind].items()},
            "candidates_checked_mean": round(float(np.mean(checked[kind][modes[0]])), 2),
        }
        if vocabulary is not None:
            figures["outcomes_no_words"] = outcomes[kind]["no_words"]
            figures["candidates_checked_mean_no_words"] = round(float(np.mean(checked[kind]["no_words"])), 2)
            stage, without = figures["stage_ms"]["p50_ms"], figures["stage_no_words_ms"]["p50_ms"]
            figures["stage_words_vs_no_words_p50"] = round(stage / without, 2) if without else None
        summary[kind] = figures
    return summary


def _word_candidates(
    query_words: Sequence[SparseWords],
    stored: dict[int, list[SparseWords]],
    geometry: GeometryParameters,
) -> list[WordCandidate[int]]:
    """The service's word candidates (``MatchingService._word_candidates``) from an exact in-memory search:
    the ``word_top_k`` stored blocks sharing most words per query block shortlist the pallets, ranked by
    word pairing."""
    pallets = list(stored)
    blocks = [block for pallet in pallets for block in stored[pallet]]
    owners = [pallet for pallet in pallets for _ in stored[pallet]]
    similarities = word_similarities(query_words, blocks)
    nearest = np.argsort(-similarities, axis=1, kind="stable")[:, : geometry.word_top_k]
    neighbours = [
        [Neighbour(pallet=owners[j], similarity=float(row[j])) for j in columns if row[j] > 0]
        for row, columns in zip(similarities, nearest, strict=True)
    ]
    if not any(neighbours):
        return []
    shortlisted = shortlist(neighbours, geometry.word_shortlist_size)
    return rank_word_candidates(query_words, {pallet: [(0, stored[pallet])] for pallet in shortlisted})
