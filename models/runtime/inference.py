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


PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""CPU flags (``/proc/cpuinfo``) of instructions that compute bfloat16 products natively (AMX, AVX-512)."""


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU advertises AMX-BF16 or AVX512-BF16 (Linux); ``False`` where unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(NATIVE_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def resolve_precision(requested: str, device: str = "cpu", cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``fp32`` / ``bf16`` as asked; ``auto``: bf16 on a CPU with native bf16, fp32 elsewhere.

    Without native bf16 a CPU emulates it and is slower than fp32, so ``auto`` never picks it there.
    """
    if requested in PRECISIONS:
        return requested
    if requested != "auto":
        raise ValueError(f"unknown precision {requested!r}; choose auto, {', '.join(PRECISIONS)}")
    return "bf16" if device == "cpu" and cpu_has_native_bf16(cpuinfo) else "fp32"


class Embedder:
    """Batched, inference-mode fingerprint extraction.

    ``preprocess`` and ``embed_tensors`` are exposed separately so callers can time them or overlap
    decoding/preprocessing with the network.
    """

    def __init__(
        self, model: PCB, metadata: CheckpointMetadata, *, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        """``bf16``: the forward runs under bfloat16 autocast (weights stay fp32, fingerprints fp32)."""
        self.device = torch.device(device)
        self.metadata = metadata
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.model_id: str = metadata.model_id
        self.embedding_dim: int = metadata.embedding_dim
        self.image_size: tuple[int, int] = metadata.image_size
        self._transform = inference_transform(metadata.image_size, metadata.mean, metadata.std)

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        precision: str = "fp32",
    ) -> Embedder:
        """Load a checkpoint (default: the shipped ``DEFAULT_CHECKPOINT``).

        ``num_threads`` sets torch's intra-op thread count, which is process-wide; ``precision`` is
        ``fp32``, ``bf16`` or ``auto`` (:func:`resolve_precision`).
        """
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        checkpoint = Path(path) if path is not None else DEFAULT_CHECKPOINT
        model, metadata = load_checkpoint(checkpoint)
        chosen = resolve_precision(precision, device)
        logger.info("loaded %s from %s on %s (%s)", metadata.model_id, checkpoint, device, chosen)
        return cls(model, metadata, device=device, precision=chosen)

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        """PIL images -> (n, 3, height, width) normalised float tensor on the CPU."""
        if not images:
            return torch.empty((0, 3, *self.image_size))
        return torch.stack([self._transform(image) for image in images])

    def embed_tensors(self, batch: Tensor) -> Tensor:
        """(n, 3, height, width) preprocessed batch -> (n, embedding_dim) unit-norm float32 fingerprints."""
        bf16 = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with torch.inference_mode(), bf16:
            inputs = batch.to(self.device, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
            fingerprints = self.model.fingerprint(inputs).float()
        if self.precision == "bf16":  # the normalisation ran in bf16 too: unit length again, in fp32
            fingerprints = torch.nn.functional.normalize(fingerprints, dim=1)
        return fingerprints.cpu()

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
