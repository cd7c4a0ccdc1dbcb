"""The fingerprint model as the service uses it: loaded once, run on one dedicated worker thread.

PyTorch inference is CPU-bound and blocking. Routes are ``async``: they hand the decoded images to a
single-thread executor and *await* the result, so no request thread (and no event-loop time) is held while
a request waits for the model, and the model never runs twice at once (one model instance, its intra-op
threads are the parallelism). Admission is bounded: at most ``max_queued`` requests wait for or run in the
model; one more is refused at once with 503 ``overloaded`` and ``Retry-After`` (:class:`ModelOverloadedError`)
instead of queueing without bound while its client times out. Probes never touch the model, so they answer
while it is saturated.

Local features (ORB, for the geometric check of the decision rule) are extracted on a small pool of their
own while the network runs: OpenCV releases the GIL, so the two overlap. Block images' features at a
side-view block's scale (``models.runtime.voting.side_scale_features``, about 8 ms of CPU a block; matched
against blocks cut out of side views, and stored) are extracted on the same pool right after and are not
part of the ``features`` stage (:class:`Later`): the recording waits for them, if they are not done yet,
before it takes the identification lock. When the checkpoint carries a visual-word vocabulary, the blocks'
word vectors (about 6 ms a block) are computed only if the rule runs the word search; the stored blocks get
theirs from the word indexer after the commit (``app.matching.word_indexer``). The same pool matches
features during identification (:attr:`ModelRunner.feature_pool`).

The block detector for side views (``models.runtime.detector.BlockDetector``), when loaded, runs on the same
worker thread and behind the same admission: a side-view request is admitted once for its detection and once
more for the fingerprints of the crops, so neither network ever runs beside the other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, TypeVar

import numpy as np
from PIL import Image

from app.errors import PalletReidError
from app.metrics.stages import Stage, timed, timed_call
from models.runtime.checkpoint import CheckpointMetadata
from models.runtime.local_features import LocalFeatures, extract
from models.runtime.visual_words import SparseWords, VisualVocabulary
from models.runtime.voting import CaptureFeatures, GeometryParameters, side_scale_features

if TYPE_CHECKING:
    from models.runtime.detector import Detection, DetectorMetadata

logger = logging.getLogger(__name__)

OVERLOAD_RETRY_AFTER_SECONDS = 1
"""A full queue drains in about ``max_queued`` forwards (tens of milliseconds each)."""


class ModelOverloadedError(PalletReidError):
    """Too many requests are waiting for the fingerprint model; retry after ``Retry-After`` seconds."""

    status_code = 503
    error_type = "overloaded"
    headers: ClassVar[Mapping[str, str] | None] = {"Retry-After": str(OVERLOAD_RETRY_AFTER_SECONDS)}


class FingerprintModel(Protocol):
    """What the service needs from ``models.runtime.inference.Embedder``."""

    model_id: str
    embedding_dim: int
    image_size: tuple[int, int]
    metadata: CheckpointMetadata
    precision: str
    """``fp32`` or ``bf16``: what the forward computes in."""

    def embed(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray: ...


class SideViewDetector(Protocol):
    """What the service needs from ``models.runtime.detector.BlockDetector``."""

    metadata: DetectorMetadata

    def detect_batch(self, images: Sequence[Image.Image]) -> list[list[Detection]]: ...


_Result = TypeVar("_Result")
_Item = TypeVar("_Item")


class Later(Generic[_Result]):
    """A value computed on first use only (once, whichever thread asks first), or already on its way."""

    def __init__(self, compute: Callable[[], _Result]) -> None:
        self._compute = compute
        self._value: list[_Result] = []  # empty until computed
        self._lock = threading.Lock()

    @classmethod
    def ready(cls, value: _Result) -> Later[_Result]:
        """A value that is already there (offline callers, tests)."""
        return cls(lambda: value)

    @classmethod
    def gathered(
        cls, futures: Sequence[concurrent.futures.Future[_Item]], combine: Callable[[list[_Item]], _Result]
    ) -> Later[_Result]:
        """``combine`` of the results of ``futures`` already submitted (their exception, if one failed)."""
        return cls(lambda: combine([future.result() for future in futures]))

    def get(self) -> _Result:
        """The value: computed (or waited for) now on first use."""
        with self._lock:
            if not self._value:
                self._value.append(self._compute())
            return self._value[0]


@dataclass(frozen=True)
class BlockWords:
    """The visual-word vectors of the uploaded blocks (upload order) and the vocabulary that made them."""

    vocabulary_id: str
    per_block: list[SparseWords]

    @classmethod
    def encode(cls, vocabulary: VisualVocabulary, features: Sequence[LocalFeatures]) -> BlockWords:
        return cls(vocabulary.vocabulary_id, [vocabulary.encode(block) for block in features])


@dataclass(frozen=True)
class BlockAnalysis:
    """Everything the decision rule needs of the uploaded blocks, in upload order."""

    fingerprints: np.ndarray
    """Unit rows (blocks, embedding dim), float32."""
    features: list[LocalFeatures]
    """Local features of each block, for the geometric check."""
    words: Later[BlockWords] | None = None
    """Their visual words, when the model has a vocabulary (searched for more candidates when the network's
    give no clear match; computed then)."""
    from_side_views: bool = False
    """The blocks were cut out of side views (``features`` made with ``side_view_extractor``)."""
    at_side_scale: Later[list[LocalFeatures]] | None = None
    """Block images: their features at a side-view block's scale (``GeometryParameters.side_scale_width``;
    ``None`` when that is 0), matched against captures cut out of side views."""

    def capture_features(self) -> CaptureFeatures:
        """The blocks' local features as the decision rule compares them with a stored capture's."""
        at_side_scale = self.at_side_scale.get() if self.at_side_scale is not None else None
        return CaptureFeatures(self.features, self.from_side_views, at_side_scale)


class ModelRunner:
    """Serialises all inference through one worker thread, admitting at most ``max_queued`` requests;
    extracts local features beside it."""

    def __init__(
        self,
        model: FingerprintModel,
        *,
        batch_size: int = 32,
        feature_threads: int | None = None,
        max_queued: int = 8,
        detector: SideViewDetector | None = None,
        vocabulary: VisualVocabulary | None = None,
    ) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self._model = model
        self._detector = detector
        self._vocabulary = vocabulary
        self._batch_size = batch_size
        self._max_queued = max_queued
        self._admitted = 0
        self._admission = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fingerprint-model")
        self._feature_pool = ThreadPoolExecutor(
            max_workers=feature_threads or min(4, os.cpu_count() or 1), thread_name_prefix="local-features"
        )

    @classmethod
    def load(
        cls,
        path: Path | None,
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        batch_size: int = 32,
        max_queued: int = 8,
        precision: str = "auto",
        detector: Path | None = None,
    ) -> ModelRunner:
        """Load a checkpoint (``None``: the shipped default); ``precision`` ``auto`` is bf16 on a CPU with
        native bf16, fp32 elsewhere (``models.runtime.inference.resolve_precision``). ``detector``: also
        load this block detector file for side views (``models.runtime.detector.DetectorError`` if unusable).
        The checkpoint's visual-word vocabulary is loaded with it, if it carries one.
        """
        from models.runtime.checkpoint import DEFAULT_CHECKPOINT, load_vocabulary
        from models.runtime.detector import BlockDetector
        from models.runtime.inference import Embedder

        embedder = Embedder.load(path, device=device, num_threads=num_threads, precision=precision)
        return cls(
            embedder,
            batch_size=batch_size,
            max_queued=max_queued,
            detector=BlockDetector.load(detector) if detector is not None else None,
            vocabulary=load_vocabulary(path if path is not None else DEFAULT_CHECKPOINT),
        )

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

    @property
    def precision(self) -> str:
        return self._model.precision

    @property
    def detector_id(self) -> str | None:
        """Model id of the block detector, ``None`` when none is loaded (side views are then refused)."""
        return self._detector.metadata.model_id if self._detector is not None else None

    @property
    def vocabulary(self) -> VisualVocabulary | None:
        """The checkpoint's visual-word vocabulary, ``None`` when it carries none (no word search then)."""
        return self._vocabulary

    @property
    def vocabulary_id(self) -> str | None:
        return self._vocabulary.vocabulary_id if self._vocabulary is not None else None

    @property
    def max_queued(self) -> int:
        return self._max_queued

    @property
    def admitted(self) -> int:
        """Requests waiting for or running in the model right now."""
        return self._admitted

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Fingerprints of ``images`` on the model's thread, blocking the caller (offline tools, the bench);
        not admission-controlled."""
        return self._executor.submit(self._model.embed, images, self._batch_size).result()

    async def analyse(
        self, images: Sequence[Image.Image], geometry: GeometryParameters, *, from_side_views: bool = False
    ) -> BlockAnalysis:
        """Fingerprints and local features of ``images``, computed at the same time, awaited off the loop.

        Local features are extracted as ``geometry`` says for block images, or for blocks cut out of side
        views (``from_side_views``); block images also get their side-scale features unless
        ``geometry.side_scale_width`` is 0 (extracted next, not awaited here). With a vocabulary, the
        blocks' words are encoded on first use (:class:`Later`).
        Raises :class:`ModelOverloadedError` at once when ``max_queued`` requests are already admitted. A
        request stays admitted until its forward has finished, even if its client went away meanwhile (one
        still waiting for the model when it is cancelled leaves the queue: its forward never runs).
        """
        forward = timed_call(Stage.FORWARD, self._model.embed)
        fingerprints = self._admit_and_submit(forward, images, self._batch_size)
        extractor = geometry.side_view_extractor if from_side_views else geometry.extractor
        pool = self._feature_pool
        with timed(Stage.FEATURES):
            local = [pool.submit(extract, image, extractor) for image in images]
            at_side_scale = (
                Later.gathered([pool.submit(side_scale_features, image, geometry) for image in images], list)
                if not from_side_views and geometry.side_scale_width > 0
                else None
            )
            features = list(await asyncio.gather(*map(asyncio.wrap_future, local)))
        vocabulary = self._vocabulary
        return BlockAnalysis(
            fingerprints=await asyncio.wrap_future(fingerprints),
            features=features,
            words=(
                Later(
                    lambda: BlockWords(vocabulary.vocabulary_id, list(pool.map(vocabulary.encode, features)))
                )
                if vocabulary is not None
                else None
            ),
            from_side_views=from_side_views,
            at_side_scale=at_side_scale,
        )

    async def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """The blocks in each side view (left to right), on the model's thread, admitted like ``analyse``.

        Raises ``RuntimeError`` when no detector is loaded (the caller checks :attr:`detector_id`).
        """
        if self._detector is None:
            raise RuntimeError("no block detector is loaded")
        detect = timed_call(Stage.DETECT, self._detect_one_by_one)
        return await asyncio.wrap_future(self._admit_and_submit(detect, images))

    def _detect_one_by_one(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """One forward per side view: two 512x288 inputs in one batch took longer than two single forwards
        on the CPU (median 128 vs 93 ms, one thread, AMD EPYC)."""
        assert self._detector is not None
        return [self._detector.detect_batch([image])[0] for image in images]

    def _admit_and_submit(
        self, function: Callable[..., _Result], *args: object
    ) -> concurrent.futures.Future[_Result]:
        """Admit one request (or raise :class:`ModelOverloadedError`) and run ``function`` on the model's
        thread; the admission ends when it has run."""
        with self._admission:
            if self._admitted >= self._max_queued:
                raise ModelOverloadedError(
                    f"{self._admitted} requests are waiting for the fingerprint model; retry shortly"
                )
            self._admitted += 1
        try:
            # In the request's context: stage timings and log lines of the model's thread name the request.
            future = self._executor.submit(contextvars.copy_context().run, function, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return future

    def _release(self, _: object = None) -> None:
        with self._admission:
            self._admitted -= 1

    @property
    def feature_pool(self) -> Executor:
        """Threads for local-feature work (extraction, matching during identification)."""
        return self._feature_pool

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._feature_pool.shutdown(wait=True)
