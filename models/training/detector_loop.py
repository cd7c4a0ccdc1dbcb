"""Training of the block detector on annotated side views (``palletreid synth-sides``).

The MobileNetV2 trunk starts from ImageNet (``models.training.pretrained``); its layers up to stride 8 stay
frozen (no backward pass through the high-resolution layers on the CPU; low-level filters need no
relearning), the stride-16 stage, the neck and the heads learn. Loss: CenterNet focal loss on
the centre heatmap plus weighted L1 on the corner offsets. AdamW, linear warm-up then cosine decay over the
run's progress, which is the larger of the step fraction and the wall-clock fraction of the time budget (so a
time-budgeted run still anneals fully). ``state.pt`` in the work directory lets a run resume.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.runtime.detector import (
    CORNER_UNIT,
    BlockDetectorNet,
    DetectorMetadata,
    normalise,
    save_detector,
    trunk_state_from_imagenet,
)
from models.training.detector_annotations import read_annotations
from models.training.detector_data import Augmentation, SideViewDataset, corner_loss, focal_loss
from models.training.pretrained import fetch as fetch_pretrained

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
HISTORY_FILE = "history.jsonl"


@dataclass(frozen=True)
class DetectorTrainConfig:
    data_dir: Path
    out: Path
    work_dir: Path
    input_width: int = 512
    input_height: int = 288
    neck_channels: int = 48
    batch_size: int = 16
    max_steps: int = 600
    time_budget_minutes: float | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    corner_weight: float = 2.0
    pretrained: bool = True
    weights: Path | None = None
    """An ImageNet MobileNetV2 state dict; default: the verified cached file (fetched if missing)."""
    seed: int = 0
    workers: int = 0
    checkpoint_every: int = 25
    resume: bool = False
    device: str = "cpu"
    """A torch device (``cuda`` trains on the GPU with bfloat16 autocast); the export is always a CPU file."""


@dataclass
class DetectorRunState:
    step: int = 0
    elapsed_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def _learning_rate(config: DetectorTrainConfig, step: int, progress: float) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_network(config: DetectorTrainConfig) -> BlockDetectorNet:
    torch.manual_seed(config.seed)
    model = BlockDetectorNet(config.neck_channels)
    if config.pretrained:
        path = config.weights or fetch_pretrained("mobilenet_v2")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = model.load_state_dict(trunk_state_from_imagenet(state), strict=False).missing_keys
        trunk_missing = [key for key in missing if key.split(".")[0] in ("stem", "stage8", "stage16")]
        if trunk_missing:
            raise ValueError(f"{path} is not a MobileNetV2 ImageNet state dict (missing {trunk_missing[:3]})")
        logger.info("trunk initialised from %s", path)
    for part in (model.stem, model.stage8):
        for parameter in part.parameters():
            parameter.requires_grad_(False)
    return model


def _set_train_mode(model: BlockDetectorNet) -> None:
    model.train()
    model.stem.eval()  # frozen: their batch-norm statistics stay ImageNet's
    model.stage8.eval()


def train_detector(
    config: DetectorTrainConfig, *, progress: bool = True
) -> tuple[DetectorMetadata, DetectorRunState]:
    """Train (or resume) and export the detector to ``config.out``; returns its metadata and the run state."""
    views = read_annotations(config.data_dir)
    if not views:
        raise ValueError(f"{config.data_dir} holds no annotated side views")
    input_size = (config.input_width, config.input_height)
    if config.input_width % 16 or config.input_height % 16:
        raise ValueError("the input width and height must be multiples of 16")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    dataset = SideViewDataset(views, input_size, augmentation=Augmentation(), seed=config.seed)
    model = build_network(config).to(device)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    work_dir = Path(config.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    state = DetectorRunState()
    state_path = work_dir / STATE_FILE
    if config.resume and state_path.exists():
        saved = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        state = DetectorRunState(saved["step"], saved["elapsed_seconds"], saved["history"])
        logger.info("resumed at step %d (%.0f s trained)", state.step, state.elapsed_seconds)
    (work_dir / "config.json").write_text(json.dumps(asdict(config), default=str, indent=2) + "\n")

    metadata = DetectorMetadata(
        input_width=config.input_width, input_height=config.input_height, neck_channels=config.neck_channels
    )
    budget = config.time_budget_minutes * 60 if config.time_budget_minutes else None
    bar = tqdm(total=config.max_steps, initial=state.step, unit="step", desc="detector", disable=not progress)
    started = time.perf_counter() - state.elapsed_seconds
    _set_train_mode(model)

    def progress_fraction() -> float:
        fraction = state.step / config.max_steps
        if budget:
            fraction = max(fraction, (time.perf_counter() - started) / budget)
        return fraction

    def save_state() -> None:
        state.elapsed_seconds = time.perf_counter() - started
        torch.save(
            {
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "step": state.step,
                "elapsed_seconds": state.elapsed_seconds,
                "history": state.history,
            },
            work_dir / (STATE_FILE + ".tmp"),
        )
        (work_dir / (STATE_FILE + ".tmp")).replace(state_path)

    while progress_fraction() < 1.0:
        dataset.epoch = state.step // max(1, len(dataset) // config.batch_size)
        generator = torch.Generator().manual_seed(config.seed * 1000 + dataset.epoch)
        loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            generator=generator,
            drop_last=len(dataset) > config.batch_size,
            num_workers=config.workers,
            pin_memory=device.type == "cuda",
        )
        for pixels, heatmap, corners, weights in loader:
            if progress_fraction() >= 1.0:
                break
            rate = _learning_rate(config, state.step, progress_fraction())
            for group in optimiser.param_groups:
                group["lr"] = rate
            pixels, heatmap, corners, weights = (
                tensor.to(device, non_blocking=True) for tensor in (pixels, heatmap, corners, weights)
            )
            inputs = normalise(pixels, metadata.mean, metadata.std)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                heatmap_logits, corner_offsets = model(inputs)
            centre = focal_loss(heatmap_logits.float(), heatmap)
            regression = corner_loss(corner_offsets.float(), corners, weights)
            loss = centre + config.corner_weight * regression
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 10.0)
            optimiser.step()
            state.step += 1
            row = {
                "step": float(state.step),
                "loss": float(loss.detach()),
                "heatmap": float(centre.detach()),
                "corners_px": float(regression.detach()) * CORNER_UNIT,
                "lr": rate,
                "seconds": time.perf_counter() - started,
            }
            state.history.append(row)
            with (work_dir / HISTORY_FILE).open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            bar.update()
            bar.set_postfix(
                loss=f"{row['loss']:.3f}", heat=f"{row['heatmap']:.3f}", px=f"{row['corners_px']:.2f}"
            )
            if state.step % config.checkpoint_every == 0:
                save_state()
    bar.close()
    save_state()
    model.to("cpu").eval()
    recent = state.history[-20:]
    training: dict[str, Any] = {
        "data": str(config.data_dir),
        "images": len(dataset),
        "steps": state.step,
        "batch_size": config.batch_size,
        "seconds": round(state.elapsed_seconds, 1),
        "final_loss": float(np.mean([row["loss"] for row in recent])) if recent else None,
        "pretrained": "mobilenet_v2 ImageNet" if config.pretrained else None,
        "device": device.type,
    }
    final = save_detector(model, config.out, DetectorMetadata(**{**asdict(metadata), "training": training}))
    return final, state
