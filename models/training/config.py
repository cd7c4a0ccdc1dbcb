"""Training configuration: the one source of training defaults (``TrainConfig``'s field defaults).

A TOML file passed with ``palletreid train --config`` overrides some of them; it uses exactly the field names,
and ``--set key=value`` and the explicit flags override again. The defaults are the recipe of the shipped
model: ResNet-18 from scratch, 4 parts x 128 dims along the width (the service's 512-dim column), 96x160
input, P x K batches of 8 identities x 4 captures.
"""

from __future__ import annotations

import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from models.runtime.pcb import (
    DEFAULT_ARCH,
    DEFAULT_LAST_STRIDE,
    DEFAULT_NUM_PARTS,
    DEFAULT_PART_AXIS,
    DEFAULT_PART_DIM,
)
from models.runtime.transforms import DEFAULT_IMAGE_SIZE


class TrainingError(RuntimeError):
    """The configuration, dataset or resume state cannot be used for training."""


@dataclass(frozen=True)
class TrainConfig:
    """All knobs of a training run; a TOML config file uses exactly these keys.

    Zero / empty values mean "not set" where noted, because TOML has no null.
    """

    data_dir: str = ""  # required: --data DIR
    # more datasets whose captures join --data's (the same "<pallet>/<position>" is the same block), e.g.
    # block crops cut from side views by `palletreid side-crops`
    extra_data_dirs: tuple[str, ...] = ()
    out_dir: str = "runs/pcb_resnet18"
    # model: num_parts x part_dim = the fingerprint size (512 for the shipped model; the service stores any)
    arch: str = DEFAULT_ARCH
    num_parts: int = DEFAULT_NUM_PARTS
    part_dim: int = DEFAULT_PART_DIM
    part_axis: str = DEFAULT_PART_AXIS
    last_stride: int = DEFAULT_LAST_STRIDE
    weights: str = ""  # state dict of the full network `arch` to start from; empty: see `pretrained`
    pretrained: bool = False  # start from the verified ImageNet file of `arch` (`palletreid weights`)
    # fine-tune: trunk and part reductions start from this inference checkpoint (same arch, parts, dims and
    # last stride); the classifiers, which belong to the identities of this run, start fresh
    init_checkpoint: str = ""
    image_height: int = DEFAULT_IMAGE_SIZE[0]
    image_width: int = DEFAULT_IMAGE_SIZE[1]
    hflip_probability: float = 0.0  # a mirrored block swaps its parts: keep off unless blocks are symmetric
    # P x K batches: 8 identities x 4 captures = 32 images
    ids_per_batch: int = 8
    instances_per_id: int = 4
    # budget: training stops at the first limit reached (0: no limit; at least one must be set); the cosine
    # schedule follows whichever is closest to its end. 45 minutes is ~1,000 synthetic pallets on 2 CPU cores.
    epochs: float = 30.0
    max_steps: int = 0
    time_budget_minutes: float = 45.0
    # optimisation
    optimizer: str = "adamw"
    lr: float = 1e-3
    classifier_lr_multiplier: float = 1.0
    backbone_lr_multiplier: float = 1.0  # trunk lr = lr x this; < 1 keeps a pretrained trunk near its init
    weight_decay: float = 0.02
    momentum: float = 0.9  # sgd only
    warmup_steps: int = 200
    min_lr_ratio: float = 0.01
    # loss: mean per-part cross-entropy + batch-hard triplet on the fingerprint
    label_smoothing: float = 0.1
    triplet: bool = True
    triplet_margin: float = 0.3
    triplet_weight: float = 1.0
    # runtime
    seed: int = 0
    workers: int = 1
    threads: int = 2  # 0: torch default
    device: str = "cpu"
    channels_last: bool = True
    amp: bool = True  # bfloat16 autocast on CUDA or a CPU with native bf16 (AMX: 2.2x per step); else float32
    checkpoint_every_steps: int = 250
    log_every_steps: int = 25
    export_half: bool = True  # fp16 weights in the exported checkpoint (half the size, same fingerprints)

    @property
    def batch_size(self) -> int:
        return self.ids_per_batch * self.instances_per_id

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.image_height, self.image_width)

    def validate(self) -> None:
        if not self.data_dir:
            raise TrainingError("data_dir is not set (config key data_dir or --data)")
        if self.epochs <= 0 and self.max_steps <= 0 and self.time_budget_minutes <= 0:
            raise TrainingError("set at least one of epochs, max_steps, time_budget_minutes")
        if self.optimizer not in ("adamw", "sgd"):
            raise TrainingError(f"optimizer must be 'adamw' or 'sgd', not {self.optimizer!r}")
        if sum((self.pretrained, bool(self.weights), bool(self.init_checkpoint))) > 1:
            raise TrainingError("set at most one of weights, pretrained=true and init_checkpoint")
        if self.backbone_lr_multiplier <= 0 or self.classifier_lr_multiplier <= 0:
            raise TrainingError("backbone_lr_multiplier and classifier_lr_multiplier must be positive")
        if self.ids_per_batch < 2:
            raise TrainingError("ids_per_batch must be at least 2 (the triplet loss needs negatives)")
        if self.checkpoint_every_steps < 1 or self.log_every_steps < 1:
            raise TrainingError("checkpoint_every_steps and log_every_steps must be positive")


_CONFIG_TYPES: dict[str, Any] = get_type_hints(TrainConfig)


def _coerce(key: str, value: Any) -> Any:
    expected = _CONFIG_TYPES[key]
    if get_origin(expected) in (Union, types.UnionType):
        expected = next(arg for arg in get_args(expected) if arg is not type(None))
    if get_origin(expected) is tuple:  # a list of strings (TOML array, JSON list or repeated flag)
        if not isinstance(value, list | tuple) or not all(isinstance(item, str | Path) for item in value):
            raise TrainingError(f"config key {key!r} expects a list of strings, got {value!r}")
        return tuple(str(item) for item in value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is str and isinstance(value, Path):
        return str(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise TrainingError(f"config key {key!r} expects {expected.__name__}, got {value!r}")
    return value


def apply_overrides(config: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """A copy of ``config`` with ``overrides`` applied, type-checked against the config fields."""
    unknown = sorted(set(overrides) - set(_CONFIG_TYPES))
    if unknown:
        raise TrainingError(f"unknown config keys {unknown}; known keys: {sorted(_CONFIG_TYPES)}")
    return replace(config, **{key: _coerce(key, value) for key, value in overrides.items()})


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The defaults, then the keys of the TOML file ``path`` (if given), then ``overrides``."""
    config = TrainConfig()
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise TrainingError(f"cannot read config {path}: {error}") from error
        config = apply_overrides(config, values)
    return apply_overrides(config, overrides or {})


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value (``lr=3e-4``, ``triplet=false``); bare words are strings."""
    key, separator, raw = text.partition("=")
    if not separator or not key.strip():
        raise TrainingError(f"expected key=value, got {text!r}")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value
