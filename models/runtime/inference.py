"""Turn block images into fingerprints with an exported PCB checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from models.runtime.checkpoint import DEFAULT_CHECKPOINT, CheckpointMetadata, load_checkpoint
from models.runtime.pcb import PCB
from models.runtime.transforms import inference_transform

logger = logging.getLogger(__name__)


class Embedder:
    """Batched, inference-mode fingerprint extraction.

    ``preprocess`` and ``embed_tensors`` are exposed separately so callers can time them or overlap
    decoding/preprocessing with the network.
    """

    def __init__(self, model: PCB, metadata: CheckpointMetadata, *, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.metadata = metadata
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.model_id: str = metadata.model_id
        self.embedding_dim: int = metadata.embedding_dim
        self.image_size: tuple[int, int] = metadata.image_size
        self._transform = inference_transform(metadata.image_size, metadata.mean, metadata.std)

    @classmethod
    def load(
        cls, path: Path | None = None, *, device: str = "cpu", num_threads: int | None = None
    ) -> Embedder:
        """Load a checkpoint (default: the shipped ``DEFAULT_CHECKPOINT``).

        ``num_threads`` sets torch's intra-op thread count, which is process-wide.
        """
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        checkpoint = Path(path) if path is not None else DEFAULT_CHECKPOINT
        model, metadata = load_checkpoint(checkpoint)
        logger.info("loaded %s from %s on %s", metadata.model_id, checkpoint, device)
        return cls(model, metadata, device=device)

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        """PIL images -> (n, 3, height, width) normalised float tensor on the CPU."""
        if not images:
            return torch.empty((0, 3, *self.image_size))
        return torch.stack([self._transform(image) for image in images])

    def embed_tensors(self, batch: Tensor) -> Tensor:
        """(n, 3, height, width) preprocessed batch -> (n, embedding_dim) unit-norm float32 fingerprints."""
        with torch.inference_mode():
            inputs = batch.to(self.device, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
            return self.model.fingerprint(inputs).float().cpu()

    def embed(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """PIL images -> (n, embedding_dim) float32 array of unit-norm fingerprints."""
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if not images:
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        chunks = [
            self.embed_tensors(self.preprocess(images[start : start + batch_size])).numpy()
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(chunks).astype(np.float32, copy=False)
