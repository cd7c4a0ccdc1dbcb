"""Training of the PCB fingerprint network on block identities.

Loss: mean per-part identity cross-entropy (optional label smoothing) plus an optional batch-hard triplet loss
on the joined fingerprint, over P x K identity batches. The learning rate warms up linearly, then follows a
cosine decay over the *progress* of the run, which is the larger of the step fraction (``max_steps`` or
``epochs``) and the wall-clock fraction (``time_budget_minutes``); so a time-budgeted run still anneals fully.

A run directory holds ``state.pt`` (full training state for ``--resume``), ``history.csv``,
``training_curve.png``, ``config.json`` and the exported inference checkpoint ``model.safetensors``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.runtime.checkpoint import CheckpointError, CheckpointMetadata, load_checkpoint, save_checkpoint
from models.runtime.pcb import PCB, build_model, parts_to_fingerprint
from models.runtime.transforms import IMAGENET_MEAN, IMAGENET_STD
from models.training.augmentation import AugmentationConfig, training_transform
from models.training.config import TrainConfig, TrainingError
from models.training.data import BlockImageDataset, BlockImageRecord, DatasetError, read_dataset
from models.training.history import plot_training_curve, write_history
from models.training.losses import batch_hard_triplet_loss, part_accuracy, part_cross_entropy
from models.training.pretrained import PretrainedWeightsError
from models.training.pretrained import fetch as fetch_pretrained
from models.training.sampler import PKBatchSampler

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
EXPORT_FILE = "model.safetensors"
HISTORY_FILE = "history.csv"
CURVE_FILE = "training_curve.png"
CONFIG_FILE = "config.json"


@dataclass
class RunState:
    step: int = 0
    elapsed_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    checkpoint: Path
    metadata: CheckpointMetadata
    steps: int
    final_loss: float


def _training_captures(data_dirs: Sequence[Path]) -> list[BlockImageRecord]:
    """All captures of every dataset, or only the ``split == "train"`` ones of a dataset with a split column.

    Identities are shared across datasets: a block crop cut from a side view and a camera capture of the same
    pallet and position train the same class.
    """
    captures: list[BlockImageRecord] = []
    for data_dir in data_dirs:
        try:
            dataset = read_dataset(data_dir)
            if any(capture.split is not None for capture in dataset):
                dataset = read_dataset(data_dir, split="train")
        except DatasetError as error:
            raise TrainingError(str(error)) from error
        captures.extend(dataset)
    return captures


def _parameter_groups(model: PCB, config: TrainConfig) -> list[dict[str, Any]]:
    """Trunk, part-reduction and classifier groups (each with its learning-rate multiplier), each split so
    that biases and norm weights get no weight decay."""
    groups: list[dict[str, Any]] = []
    for name, modules, multiplier in (
        ("backbone", [model.trunk], config.backbone_lr_multiplier),
        ("reductions", [model.reductions], 1.0),
        ("classifiers", [model.classifiers], config.classifier_lr_multiplier),
    ):
        parameters = [p for module in modules for p in module.parameters()]
        decayed = [p for p in parameters if p.ndim > 1]
        undecayed = [p for p in parameters if p.ndim <= 1]
        for suffix, params, decay in (("", decayed, config.weight_decay), ("_no_decay", undecayed, 0.0)):
            if params:
                groups.append(
                    {
                        "name": name + suffix,
                        "params": params,
                        "weight_decay": decay,
                        "lr_multiplier": multiplier,
                    }
                )
    return groups


def _initial_weights(config: TrainConfig) -> Path | None:
    """The state dict a new run starts from: the user's file, the verified ImageNet file, or none."""
    if config.weights:
        return Path(config.weights)
    if not config.pretrained:
        return None
    try:
        return fetch_pretrained(config.arch)
    except PretrainedWeightsError as error:
        raise TrainingError(f"pretrained=true: {error}") from error


def initialise_from_checkpoint(model: PCB, path: Path) -> None:
    """Copy an inference checkpoint's trunk and part reductions into ``model`` (fine-tuning)."""
    try:
        source, metadata = load_checkpoint(path)
    except (CheckpointError, OSError) as error:
        raise TrainingError(f"init_checkpoint: {error}") from error
    expected = (model.arch, model.num_parts, model.part_dim, model.part_axis, model.last_stride)
    found = (metadata.arch, metadata.num_parts, metadata.part_dim, metadata.part_axis, metadata.last_stride)
    if found != expected:
        raise TrainingError(
            f"init_checkpoint {path} is {found} (arch, parts, part dim, part axis, last stride) but this run "
            f"builds {expected}; set the same architecture"
        )
    missing, _unexpected = model.load_state_dict(source.state_dict(), strict=False)
    if missing and not all(key.startswith("classifiers.") for key in missing):
        raise TrainingError(f"init_checkpoint {path} lacks weights of this network: {missing[:3]}")
    logger.info("fine-tuning from %s (%s)", path, metadata.model_id)


def build_optimizer(model: PCB, config: TrainConfig) -> torch.optim.Optimizer:
    groups = _parameter_groups(model, config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def bf16_autocast_supported(device: torch.device) -> bool:
    """bf16 autocast pays off on CUDA and on CPUs with native bf16 (2.2x per step measured with AMX);
    elsewhere the CPU emulates bf16 and is slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def learning_rate_factor(step: int, progress: float, config: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from 1 to ``min_lr_ratio`` over the run's progress."""
    cosine = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * min(progress, 1.0))
    )
    if step < config.warmup_steps:
        return cosine * (step + 1) / config.warmup_steps
    return cosine


def _total_steps(config: TrainConfig, batches_per_epoch: int) -> int | None:
    limits = []
    if config.max_steps > 0:
        limits.append(config.max_steps)
    if config.epochs > 0:
        limits.append(max(1, round(config.epochs * batches_per_epoch)))
    return min(limits) if limits else None


def _progress(state: RunState, total_steps: int | None, config: TrainConfig) -> float:
    fractions = []
    if total_steps is not None:
        fractions.append(state.step / total_steps)
    if config.time_budget_minutes > 0:
        fractions.append(state.elapsed_seconds / (config.time_budget_minutes * 60))
    return max(fractions)


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _save_state(
    path: Path,
    model: PCB,
    optimizer: torch.optim.Optimizer,
    state: RunState,
    config: TrainConfig,
    identities: list[str],
) -> None:
    temporary = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": state.step,
            "elapsed_seconds": state.elapsed_seconds,
            "history": state.history,
            "config": asdict(config),
            "identities": identities,
            "rng": _rng_states(),
        },
        temporary,
    )
    temporary.replace(path)


def load_state(path: Path) -> dict[str, Any]:
    """Read a saved training state (``state.pt`` or the run directory that holds it)."""
    state_path = path / STATE_FILE if path.is_dir() else path
    if not state_path.is_file():
        raise TrainingError(
            f"no training state at {state_path}; pass a run directory written by `palletreid train`"
        )
    loaded: dict[str, Any] = torch.load(state_path, map_location="cpu", weights_only=False)
    return loaded


def train(config: TrainConfig, *, resume: Path | None = None) -> TrainResult:
    """Run (or resume) a training run and export its inference checkpoint."""
    config.validate()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' requested but CUDA is not available")
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    data_dirs = [Path(config.data_dir), *(Path(extra) for extra in config.extra_data_dirs)]
    data_dir = data_dirs[0]
    captures = _training_captures(data_dirs)
    transform = training_transform(
        config.image_size,
        IMAGENET_MEAN,
        IMAGENET_STD,
        AugmentationConfig(horizontal_flip_probability=config.hflip_probability),
    )
    dataset = BlockImageDataset(captures, transform)
    identities = dataset.identities
    logger.info(
        "training on %d captures of %d identities from %s",
        len(captures),
        len(identities),
        ", ".join(str(path) for path in data_dirs),
    )

    model = build_model(
        config.arch,
        num_classes=len(identities),
        num_parts=config.num_parts,
        part_dim=config.part_dim,
        part_axis=config.part_axis,
        last_stride=config.last_stride,
        weights=None if resume is not None else _initial_weights(config),
    )
    if config.init_checkpoint and resume is None:
        initialise_from_checkpoint(model, Path(config.init_checkpoint))
    optimizer = build_optimizer(model, config)
    state = RunState()
    if resume is not None:
        saved = load_state(resume)
        if saved["identities"] != identities:
            raise TrainingError(
                f"{resume} was trained on different identities than {data_dir}; cannot resume"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = RunState(
            step=saved["step"], elapsed_seconds=saved["elapsed_seconds"], history=saved["history"]
        )
        _restore_rng_states(saved["rng"])
        logger.info("resumed from %s at step %d", resume, state.step)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()

    run_dir = Path(config.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")

    sampler = PKBatchSampler(
        dataset.labels,
        config.ids_per_batch,
        config.instances_per_id,
        seed=config.seed,
        start_batch=state.step,
    )
    loader: DataLoader[Any] = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed + state.step),
    )
    total_steps = _total_steps(config, sampler.batches_per_epoch)
    use_amp = config.amp and bf16_autocast_supported(device)
    if config.amp and not use_amp:
        logger.warning("amp requested but %s has no native bfloat16; training in float32", device)
    logger.info(
        "batch %d (%d ids x %d), %d batches per epoch, step limit %s, time budget %s min",
        sampler.batch_size,
        config.ids_per_batch,
        config.instances_per_id,
        sampler.batches_per_epoch,
        total_steps,
        config.time_budget_minutes or None,
    )

    progress_bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
    batches = iter(loader)  # the P x K sampler is endless
    last_save = state.step
    try:
        while _progress(state, total_steps, config) < 1.0:
            started = time.perf_counter()
            images, targets, _cameras = next(batches)
            images = images.to(device, non_blocking=True)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = targets.to(device, non_blocking=True)
            factor = learning_rate_factor(state.step, _progress(state, total_steps, config), config)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * group["lr_multiplier"] * factor
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                part_logits, part_features = model(images)
            part_logits = [logits.float() for logits in part_logits]
            cross_entropy = part_cross_entropy(part_logits, targets, config.label_smoothing)
            triplet = (
                batch_hard_triplet_loss(
                    parts_to_fingerprint(part_features.float()), targets, config.triplet_margin
                )
                if config.triplet
                else torch.zeros((), device=device)
            )
            loss = cross_entropy + config.triplet_weight * triplet
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {float(loss)} at step {state.step}; lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            state.step += 1
            state.elapsed_seconds += time.perf_counter() - started
            row = {
                "step": float(state.step),
                "loss": float(loss.detach()),
                "cross_entropy": float(cross_entropy.detach()),
                "triplet": float(triplet.detach()),
                "accuracy": part_accuracy([logits.detach() for logits in part_logits], targets),
                "lr": config.lr * factor,
            }
            state.history.append(row)
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.2f}")
            if state.step % config.log_every_steps == 0:
                recent = state.history[-config.log_every_steps :]
                logger.info(
                    "step %d loss %.4f (ce %.4f, triplet %.4f) acc %.3f lr %.2e %.2f s/step",
                    state.step,
                    np.mean([r["loss"] for r in recent]),
                    np.mean([r["cross_entropy"] for r in recent]),
                    np.mean([r["triplet"] for r in recent]),
                    np.mean([r["accuracy"] for r in recent]),
                    row["lr"],
                    state.elapsed_seconds / max(1, len(state.history)),
                )
            if state.step - last_save >= config.checkpoint_every_steps:
                _save_state(run_dir / STATE_FILE, model, optimizer, state, config, identities)
                last_save = state.step
    except KeyboardInterrupt:
        logger.warning("interrupted at step %d; saving state and exporting", state.step)
    finally:
        progress_bar.close()
        del batches  # stops the loader workers

    _save_state(run_dir / STATE_FILE, model, optimizer, state, config, identities)
    write_history(run_dir / HISTORY_FILE, state.history)
    plot_training_curve(state.history, run_dir / CURVE_FILE)
    recent = state.history[-50:]
    final_loss = float(np.mean([r["loss"] for r in recent])) if recent else float("nan")
    metadata = CheckpointMetadata.for_model(
        model,
        image_height=config.image_height,
        image_width=config.image_width,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        training={
            "dataset": str(data_dir),
            "extra_datasets": [str(path) for path in data_dirs[1:]],
            "identities": len(identities),
            "captures": len(captures),
            "steps": state.step,
            "epochs": round(state.step / sampler.batches_per_epoch, 3),
            "elapsed_minutes": round(state.elapsed_seconds / 60, 2),
            "final_loss": round(final_loss, 4),
            "final_accuracy": round(float(np.mean([r["accuracy"] for r in recent])), 4) if recent else None,
            "config": asdict(config),
        },
    )
    model.eval()
    exported = save_checkpoint(
        model.to("cpu").to(memory_format=torch.contiguous_format),
        run_dir / EXPORT_FILE,
        metadata=metadata,
        half=config.export_half,
    )
    logger.info("exported %s to %s after %d steps", exported.model_id, run_dir / EXPORT_FILE, state.step)
    return TrainResult(
        run_dir=run_dir,
        checkpoint=run_dir / EXPORT_FILE,
        metadata=exported,
        steps=state.step,
        final_loss=final_loss,
    )
