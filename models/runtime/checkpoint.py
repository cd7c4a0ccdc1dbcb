"""Inference checkpoints: a model is one artefact, PCB weights in safetensors with all it takes to use them.

The header carries the architecture, the preprocessing (input size, mean, std), the embedding size, a
``model_id`` derived from the stored weights (so a fingerprint can always be traced to the exact model that
produced it) and, once calibrated, the model's decision parameters (:mod:`models.runtime.thresholds`), which
name the same ``model_id``. Classifiers are training-only and are not stored. A visual-word vocabulary
(:mod:`models.runtime.visual_words`) may be stored beside the weights; it is named by its own digest and does
not change the ``model_id``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from models.runtime.pcb import PCB, build_model
from models.runtime.thresholds import DecisionParameters
from models.runtime.transforms import DEFAULT_IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD
from models.runtime.visual_words import VisualVocabulary

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT: Path = Path(__file__).resolve().parent.parent / "checkpoints" / "pcb_resnet18.safetensors"
"""The checkpoint shipped with the package and used when no path is given."""

FORMAT_KEY = "palletreid_format"
FORMAT_VERSION = "1"
CLASSIFIER_PREFIX = "classifiers."
VOCABULARY_PREFIX = "visual_words."
"""Tensors of the visual-word vocabulary: stored beside the weights, not part of the ``model_id``."""
DECISION_KEY = "decision"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not describe a usable PCB model."""


@dataclass(frozen=True)
class CheckpointMetadata:
    arch: str
    num_parts: int
    part_dim: int
    part_axis: str
    last_stride: int
    image_height: int = DEFAULT_IMAGE_SIZE[0]
    image_width: int = DEFAULT_IMAGE_SIZE[1]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    model_id: str = ""
    """Filled in by ``save_checkpoint`` from the stored weights; leave empty when creating metadata."""
    training: dict[str, Any] = field(default_factory=dict)
    """Free-form training information (dataset, steps, losses, ...), stored as JSON."""
    decision: DecisionParameters | None = None
    """The calibrated decision parameters of this model (None: not calibrated yet)."""
    vocabulary_id: str = ""
    """The visual-word vocabulary stored with the weights (empty: none; see :func:`store_vocabulary`)."""

    @property
    def embedding_dim(self) -> int:
        return self.num_parts * self.part_dim

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.image_height, self.image_width)

    @classmethod
    def for_model(cls, model: PCB, **overrides: Any) -> CheckpointMetadata:
        """Metadata describing ``model``'s architecture; preprocessing and training info via ``overrides``."""
        return cls(
            arch=model.arch,
            num_parts=model.num_parts,
            part_dim=model.part_dim,
            part_axis=model.part_axis,
            last_stride=model.last_stride,
            **overrides,
        )

    def to_header(self) -> dict[str, str]:
        values = asdict(self)
        del values[DECISION_KEY]
        header = {key: json.dumps(value) for key, value in values.items()}
        if self.decision is not None:
            header[DECISION_KEY] = json.dumps(self.decision.to_dict(), sort_keys=True)
        header["embedding_dim"] = json.dumps(self.embedding_dim)
        header[FORMAT_KEY] = FORMAT_VERSION
        return header

    @classmethod
    def from_header(cls, header: dict[str, str], source: Path) -> CheckpointMetadata:
        if header.get(FORMAT_KEY) != FORMAT_VERSION:
            raise CheckpointError(
                f"{source} is a safetensors file but not a palletreid checkpoint (format "
                f"{header.get(FORMAT_KEY)!r}, expected {FORMAT_VERSION!r}); export one with "
                "`palletreid train` or models.runtime.checkpoint.save_checkpoint"
            )
        values: dict[str, Any] = {}
        try:
            for item in fields(cls):
                if item.name in header:
                    values[item.name] = json.loads(header[item.name])
            if DECISION_KEY in values:
                values[DECISION_KEY] = DecisionParameters.from_dict(values[DECISION_KEY])
            values["mean"] = tuple(float(v) for v in values["mean"])
            values["std"] = tuple(float(v) for v in values["std"])
            metadata = cls(**values)
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"{source} has incomplete or invalid metadata ({error}); re-export it with `palletreid train`"
            ) from error
        if metadata.decision is not None and metadata.decision.model_id != metadata.model_id:
            raise CheckpointError(
                f"{source} carries decision parameters calibrated for {metadata.decision.model_id}, not for "
                f"its own weights ({metadata.model_id}); recalibrate with `palletreid evaluate --calibrate`"
            )
        stored_dim = header.get("embedding_dim")
        if stored_dim is not None and json.loads(stored_dim) != metadata.embedding_dim:
            raise CheckpointError(
                f"{source} says embedding_dim={stored_dim} but num_parts*part_dim={metadata.embedding_dim}; "
                "the file was edited or corrupted, re-export it"
            )
        return metadata


def _weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].contiguous().cpu()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def inference_state(model: PCB, *, half: bool = False) -> dict[str, torch.Tensor]:
    """The model's state without classifiers, optionally with floating tensors in fp16."""
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if key.startswith(CLASSIFIER_PREFIX):
            continue
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        state[key] = tensor.contiguous().clone()
    return state


def _model_id(arch: str, num_parts: int, part_dim: int, state: dict[str, torch.Tensor]) -> str:
    weights = {key: value for key, value in state.items() if not key.startswith(VOCABULARY_PREFIX)}
    return f"{arch}-p{num_parts}x{part_dim}-{_weights_digest(weights)[:12]}"


def save_checkpoint(
    model: PCB, path: Path, *, metadata: CheckpointMetadata, half: bool = False
) -> CheckpointMetadata:
    """Write the inference checkpoint of ``model`` to ``path``; returns the metadata with its ``model_id``.

    Decision parameters in ``metadata`` are kept only if they name the resulting ``model_id``.
    """
    state = inference_state(model, half=half)
    model_id = _model_id(model.arch, model.num_parts, model.part_dim, state)
    if metadata.decision is not None and metadata.decision.model_id != model_id:
        raise CheckpointError(
            f"decision parameters for {metadata.decision.model_id} cannot go into a checkpoint of {model_id}"
        )
    final = replace(
        metadata,
        arch=model.arch,
        num_parts=model.num_parts,
        part_dim=model.part_dim,
        part_axis=model.part_axis,
        last_stride=model.last_stride,
        model_id=model_id,
        vocabulary_id="",
    )
    _write(path, state, final)
    logger.info("saved checkpoint %s (%s)", path, model_id)
    return final


def _write(path: Path, state: dict[str, torch.Tensor], metadata: CheckpointMetadata) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    save_file(state, str(temporary), metadata=metadata.to_header())
    temporary.chmod(path.stat().st_mode if path.exists() else 0o644)
    temporary.replace(path)


def store_decision_parameters(path: Path, parameters: DecisionParameters) -> CheckpointMetadata:
    """Write calibrated decision parameters into the checkpoint at ``path``; the weights stay as they are.

    Refuses parameters calibrated for another model, and a file whose weights no longer give its ``model_id``.
    """
    path = Path(path)
    metadata = read_metadata(path)
    if parameters.model_id != metadata.model_id:
        raise CheckpointError(
            f"decision parameters were calibrated for {parameters.model_id}, but {path} holds "
            f"{metadata.model_id}"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} weights are unreadable ({error}); re-export it") from error
    if _model_id(metadata.arch, metadata.num_parts, metadata.part_dim, state) != metadata.model_id:
        raise CheckpointError(f"{path}: the weights do not match its model_id {metadata.model_id}")
    final = replace(metadata, decision=parameters)
    _write(path, state, final)
    logger.info("stored decision parameters of %s in %s", metadata.model_id, path)
    return final


def store_vocabulary(path: Path, vocabulary: VisualVocabulary) -> CheckpointMetadata:
    """Put ``vocabulary`` into the checkpoint at ``path`` (replacing any); weights and ``model_id`` stay.

    Decision parameters stay too: the visual-word stage is part of the rule they describe, so recalibrate
    (``palletreid evaluate --calibrate``) when a new vocabulary changes the figures.
    """
    path = Path(path)
    metadata = read_metadata(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} weights are unreadable ({error}); re-export it") from error
    state = {key: value for key, value in state.items() if not key.startswith(VOCABULARY_PREFIX)}
    for key, value in vocabulary.tensors().items():
        state[key] = torch.from_numpy(np.ascontiguousarray(value))
    final = replace(metadata, vocabulary_id=vocabulary.vocabulary_id)
    _write(path, state, final)
    logger.info("stored vocabulary %s in %s", vocabulary.vocabulary_id, path)
    return final


def load_vocabulary(path: Path) -> VisualVocabulary | None:
    """The visual-word vocabulary stored in the checkpoint, ``None`` when it has none.

    Refuses a vocabulary whose digest is not the one the header names (an edited or mixed-up file).
    """
    path = Path(path)
    metadata = read_metadata(path)
    if not metadata.vocabulary_id:
        return None
    try:
        with safe_open(str(path), framework="np") as handle:
            keys = [key for key in handle.keys() if key.startswith(VOCABULARY_PREFIX)]  # noqa: SIM118
            tensors = {key: handle.get_tensor(key) for key in keys}
        vocabulary = VisualVocabulary.from_tensors(tensors)
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"checkpoint {path} has an unreadable vocabulary ({error}); store it again"
        ) from error
    if vocabulary is None or vocabulary.vocabulary_id != metadata.vocabulary_id:
        found = None if vocabulary is None else vocabulary.vocabulary_id
        raise CheckpointError(
            f"checkpoint {path} names vocabulary {metadata.vocabulary_id} but holds {found}; store it again "
            "with `palletreid vocabulary`"
        )
    return vocabulary


def read_metadata(path: Path) -> CheckpointMetadata:
    """Read only the header of a checkpoint (cheap; no weights loaded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; train one with `palletreid train` or pass the path of an "
            "exported .safetensors checkpoint"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} is not a readable safetensors file ({error}); it may be truncated or a "
            "Git LFS pointer: fetch or re-export it"
        ) from error
    return CheckpointMetadata.from_header(header, path)


def load_checkpoint(path: Path) -> tuple[PCB, CheckpointMetadata]:
    """Load an inference checkpoint into a float32 PCB in eval mode."""
    path = Path(path)
    metadata = read_metadata(path)
    try:
        model = build_model(
            metadata.arch,
            num_classes=0,
            num_parts=metadata.num_parts,
            part_dim=metadata.part_dim,
            part_axis=metadata.part_axis,
            last_stride=metadata.last_stride,
        )
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path} describes an unsupported model: {error}") from error
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} weights are unreadable ({error}); re-export it") from error
    state = {key: value for key, value in state.items() if not key.startswith(VOCABULARY_PREFIX)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(key for key in set(expected) & set(state) if expected[key].shape != state[key].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"checkpoint {path} weights do not match its metadata ({metadata.arch}, "
            f"{metadata.num_parts} parts x {metadata.part_dim}): missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {mismatched[:3]}; re-export it with `palletreid train`"
        )
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in state.items()})
    model.eval()
    return model, metadata
