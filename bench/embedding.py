"""Embedding throughput: the service's own path (decode, preprocess, batching, network) vs the bare forward.

The service path is exactly what a request goes through: ``models.runtime.images.decode_image`` on the
uploaded bytes, then ``app.model_runner.ModelRunner.embed`` (its worker thread, ``Embedder.embed`` with the
service's batch size). The bare forward runs the same network on a pre-made input tensor of the same batch
size, in several variants; their ratio is the overhead of everything around the network.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from app.model_runner import ModelRunner
from app.settings import Settings
from bench.config import SERVICE_VARIANT, BenchConfig
from bench.timing import measure_rate
from models.runtime.images import decode_image
from models.runtime.inference import Embedder

logger = logging.getLogger(__name__)

SERVICE_RATE_TARGET = 60.0
"""Block images/s the service path must reach at its batch size."""
OVERHEAD_RATIO_TARGET = 0.85
"""Service path throughput as a fraction of the bare forward it runs."""

Forward = Callable[[Tensor], Tensor]


def _variant_forward(embedder: Embedder, variant: str) -> tuple[Forward, torch.memory_format]:
    """The bare forward of ``variant`` and the memory format its input must have."""
    model = embedder.model
    if variant == "fp32":
        contiguous_model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        return contiguous_model.fingerprint, torch.contiguous_format
    if variant == "channels_last":
        return model.fingerprint, torch.channels_last
    if variant == "bf16":

        def bf16_forward(batch: Tensor) -> Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model.fingerprint(batch).float()

        return bf16_forward, torch.channels_last
    if variant == "compile":
        # Eval-mode forward is the fingerprint; a dynamic batch dimension compiles once for all batch sizes.
        compiled = torch.compile(model, dynamic=True)
        return compiled, torch.channels_last
    raise ValueError(f"unknown embedding variant {variant!r}")


def _bare_rate(forward: Forward, batch: Tensor, min_seconds: float) -> dict[str, float]:
    with torch.inference_mode():
        started = time.perf_counter()
        forward(batch)  # first call: compiles where the variant compiles
        first_call_s = time.perf_counter() - started
        rate = measure_rate(lambda _: forward(batch), items_per_call=batch.shape[0], min_seconds=min_seconds)
    return {
        "images_per_s": round(rate.items_per_s, 2),
        "ms_per_batch": round(rate.ms_per_call, 2),
        "first_call_s": round(first_call_s, 2),
    }


def run_embedding(
    embedder: Embedder, blobs: Sequence[bytes], config: BenchConfig, settings: Settings
) -> dict[str, Any]:
    """Throughput of the service path and of each bare-forward variant at each batch size."""

    def decode(blob: bytes) -> Image.Image:
        return decode_image(blob, max_pixels=settings.max_image_pixels, name="bench")

    images = [decode(blob) for blob in blobs]
    decode_rate = measure_rate(
        lambda _: [decode(blob) for blob in blobs],
        items_per_call=len(blobs),
        min_seconds=config.embed_seconds / 4,
    )
    preprocess_rate = measure_rate(
        lambda _: embedder.preprocess(images),
        items_per_call=len(images),
        min_seconds=config.embed_seconds / 4,
    )
    runner = ModelRunner(embedder, batch_size=settings.embed_batch_size)
    forwards: dict[str, tuple[Forward, torch.memory_format]] = {}
    errors: dict[str, str] = {}
    for variant in config.embedding_variants:
        try:
            forwards[variant] = _variant_forward(embedder, variant)
        except Exception as error:  # an optional speed-up that this machine cannot run is reported, not fatal
            logger.warning("embedding variant %s unavailable: %s", variant, error)
            errors[variant] = str(error)

    # The ratio's baseline: the bare forward computing what the service computes (its precision).
    service_variant = "bf16" if embedder.precision == "bf16" else SERVICE_VARIANT
    rows = []
    try:
        for batch_size in config.embed_batch_sizes:
            groups = [
                [blobs[(start + offset) % len(blobs)] for offset in range(batch_size)]
                for start in range(0, len(blobs), batch_size)
            ]
            logger.info("embedding: batch %d, service path", batch_size)

            def service_call(call: int, groups: list[list[bytes]] = groups) -> np.ndarray:
                return runner.embed([decode(blob) for blob in groups[call % len(groups)]])

            service = measure_rate(service_call, items_per_call=batch_size, min_seconds=config.embed_seconds)
            preprocessed = embedder.preprocess([images[index % len(images)] for index in range(batch_size)])
            bare: dict[str, dict[str, float]] = {}
            for variant, (forward, memory_format) in forwards.items():
                logger.info("embedding: batch %d, bare forward %s", batch_size, variant)
                try:
                    bare[variant] = _bare_rate(
                        forward, preprocessed.contiguous(memory_format=memory_format), config.embed_seconds
                    )
                except Exception as error:  # e.g. torch.compile without a working C++ toolchain
                    logger.warning("embedding variant %s failed: %s", variant, error)
                    errors[variant] = str(error)
            baseline = bare.get(service_variant)
            rows.append(
                {
                    "batch_size": batch_size,
                    "service_images_per_s": round(service.items_per_s, 2),
                    "service_ms_per_batch": round(service.ms_per_call, 2),
                    "bare": bare,
                    "service_vs_bare": (
                        round(service.items_per_s / baseline["images_per_s"], 3) if baseline else None
                    ),
                }
            )
    finally:
        runner.close()

    return {
        "image_size": list(embedder.image_size),
        "torch_threads": torch.get_num_threads(),
        "service_batch_size": settings.embed_batch_size,
        "service_precision": embedder.precision,
        "service_vs_bare_baseline": service_variant,
        "decode_ms_per_image": round(1000 / decode_rate.items_per_s, 3),
        "preprocess_ms_per_image": round(1000 / preprocess_rate.items_per_s, 3),
        "batches": rows,
        "variant_errors": errors,
        "targets": _targets(rows, settings.embed_batch_size),
    }


def _targets(rows: list[dict[str, Any]], service_batch_size: int) -> dict[str, dict[str, Any]]:
    """Targets at the service's batch size (or the largest measured one)."""
    if not rows:
        return {}
    row = next(
        (r for r in rows if r["batch_size"] == service_batch_size), max(rows, key=lambda r: r["batch_size"])
    )
    ratio = row["service_vs_bare"]
    return {
        "service_images_per_s": {
            "batch_size": row["batch_size"],
            "target": f">= {SERVICE_RATE_TARGET:g}",
            "value": row["service_images_per_s"],
            "met": row["service_images_per_s"] >= SERVICE_RATE_TARGET,
        },
        "service_vs_bare": {
            "batch_size": row["batch_size"],
            "target": f">= {OVERHEAD_RATIO_TARGET:g}",
            "value": ratio,
            "met": ratio is not None and ratio >= OVERHEAD_RATIO_TARGET,
        },
    }
