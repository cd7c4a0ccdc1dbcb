"""Local features of evaluation images, extracted lazily through the service's code and cached on disk.

The service extracts a block's features from the upload decoded by :mod:`models.runtime.images` with the
model's :class:`~models.runtime.local_features.ExtractorSettings`; so does :class:`FeatureStore`, so the
inlier counts of the evaluation are those the service would see. Images are extracted the first time the
rule asks for them (every query block, and the stored blocks of the candidates it checks), from any number
of threads (OpenCV releases the GIL), and :meth:`FeatureStore.save` writes everything extracted to one
cache file: a rerun, or another evaluation of the same dataset, reads them back instead of extracting.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from models.runtime.images import load_image_file
from models.runtime.local_features import ExtractorSettings, LocalFeatures, LocalFeaturesFormatError, extract

logger = logging.getLogger(__name__)

FEATURES_CACHE = "local_features.npz"


def settings_key(settings: ExtractorSettings) -> str:
    """The extractor settings as canonical JSON: features extracted under other settings are not reused."""
    return json.dumps(asdict(settings), sort_keys=True)


class FeatureStore:
    """Local features by image path, extracted on first use and optionally persisted to ``cache``."""

    def __init__(self, settings: ExtractorSettings, cache: Path | None = None) -> None:
        self.settings = settings
        self.cache = Path(cache) if cache is not None else None
        self._features: dict[str, LocalFeatures] = {}
        self._lock = threading.Lock()
        self.extracted = 0
        """Images extracted by this store (the rest came from the cache)."""
        self.loaded = self._load() if self.cache is not None else 0
        """Images read from the cache file."""

    def get(self, path: Path | str) -> LocalFeatures:
        """Features of the image at ``path``; thread-safe."""
        key = str(path)
        features = self._features.get(key)
        if features is None:
            features = extract(load_image_file(Path(key)), self.settings)
            with self._lock:
                if key not in self._features:
                    self._features[key] = features
                    self.extracted += 1
        return features

    def get_all(self, paths: Iterable[Path | str]) -> list[LocalFeatures]:
        return [self.get(path) for path in paths]

    def __len__(self) -> int:
        return len(self._features)

    def save(self) -> None:
        """Write every feature set held (read or extracted) to the cache file, if anything is new."""
        if self.cache is None or self.extracted == 0:
            return
        with self._lock:
            items = sorted(self._features.items())
        blobs = [features.to_bytes() for _, features in items]
        offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(blob) for blob in blobs])
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.cache.with_name(self.cache.name + ".tmp")
        with temporary.open("wb") as handle:
            np.savez(
                handle,
                settings=np.array(settings_key(self.settings)),
                paths=np.array([path for path, _ in items]),
                offsets=offsets,
                data=np.frombuffer(b"".join(blobs), dtype=np.uint8),
            )
        os.replace(temporary, self.cache)
        logger.info("cached local features of %d images in %s", len(items), self.cache)

    def _load(self) -> int:
        assert self.cache is not None
        if not self.cache.is_file():
            return 0
        try:
            with np.load(self.cache, allow_pickle=False) as stored:
                if str(stored["settings"]) != settings_key(self.settings):
                    logger.info("%s holds features of other extractor settings; ignoring it", self.cache)
                    return 0
                paths, offsets = stored["paths"], stored["offsets"]
                data = stored["data"].tobytes()
        except (OSError, KeyError, ValueError) as error:
            logger.warning("local features cache %s is unreadable (%s); ignoring it", self.cache, error)
            return 0
        try:
            for index, path in enumerate(paths):
                blob = data[offsets[index] : offsets[index + 1]]
                self._features[str(path)] = LocalFeatures.from_bytes(blob)
        except LocalFeaturesFormatError as error:
            logger.warning("local features cache %s is corrupt (%s); ignoring it", self.cache, error)
            self._features.clear()
            return 0
        logger.info("read local features of %d images from %s", len(self._features), self.cache)
        return len(self._features)
