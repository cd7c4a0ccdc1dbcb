"""The fingerprint model as the service uses it: loaded once, run on one dedicated worker thread.

PyTorch inference is CPU-bound and blocking; routes are sync (FastAPI runs them in its threadpool) and hand
the images to a single-thread executor, so the event loop never blocks and the model never runs twice at once
(one model instance, its intra-op threads are the parallelism).

Local features (ORB, for the geometric check of the decision rule) are extracted on a small pool of their
own while the network runs: OpenCV releases the GIL, so the two overlap. The same pool matches features
during identification (:attr:`ModelRunner.feature_pool`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from models.runtime.checkpoint import CheckpointMetadata
from models.runtime.local_features import ExtractorSettings, LocalFeatures, extract

logger = logging.getLogger(__name__)


class FingerprintModel(Protocol):
    """What the service needs from ``models.runtime.inference.Embedder``."""

    model_id: str
    embedding_dim: int
    image_size: tuple[int, int]
    metadata: CheckpointMetadata

    def embed(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray: ...


@dataclass(frozen=True)
class BlockAnalysis:
    """Everything the decision rule needs of the uploaded blocks, in upload order."""

    fingerprints: np.ndarray
    """Unit rows (blocks, embedding dim), float32."""
    features: list[LocalFeatures]
    """Local features of each block, for the geometric check."""


class ModelRunner:
    """Serialises all inference through one worker thread; extracts local features beside it."""

    def __init__(
        self, model: FingerprintModel, *, batch_size: int = 32, feature_threads: int | None = None
    ) -> None:
        self._model = model
        self._batch_size = batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fingerprint-model")
        self._feature_pool = ThreadPoolExecutor(
            max_workers=feature_threads or min(4, os.cpu_count() or 1), thread_name_prefix="local-features"
        )

    @classmethod
    def load(
        cls, path: Path | None, *, device: str = "cpu", num_threads: int | None = None, batch_size: int = 32
    ) -> ModelRunner:
        """Load a checkpoint (``None``: the shipped default)."""
        from models.runtime.inference import Embedder

        return cls(Embedder.load(path, device=device, num_threads=num_threads), batch_size=batch_size)

    @property
    def model_id(self) -> str:
        return self._model.model_id

    @property
    def embedding_dim(self) -> int:
        return self._model.embedding_dim

    @property
    def metadata(self) -> CheckpointMetadata:
        """The checkpoint header: preprocessing, embedding size, calibrated decision parameters."""
        return self._model.metadata

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Fingerprints of ``images`` (unit rows, float32); blocks the calling thread, not the event loop."""
        return self._executor.submit(self._model.embed, images, self._batch_size).result()

    def analyse(self, images: Sequence[Image.Image], extractor: ExtractorSettings) -> BlockAnalysis:
        """Fingerprints and local features of ``images``; the two are computed at the same time."""
        fingerprints = self._executor.submit(self._model.embed, images, self._batch_size)
        features = list(self._feature_pool.map(lambda image: extract(image, extractor), images))
        return BlockAnalysis(fingerprints=fingerprints.result(), features=features)

    @property
    def feature_pool(self) -> Executor:
        """Threads for local-feature work (extraction, matching during identification)."""
        return self._feature_pool

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._feature_pool.shutdown(wait=True)
