"""Training: losses, P x K sampler, config handling and tiny end-to-end runs (with resume and export)."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main as cli_main
from models.runtime.inference import Embedder
from models.runtime.pcb import build_model
from models.training.config import TrainConfig, TrainingError, apply_overrides, load_config, parse_assignment
from models.training.loop import (
    bf16_autocast_supported,
    initialise_from_checkpoint,
    learning_rate_factor,
    load_state,
    train,
)
from models.training.losses import batch_hard_triplet_loss, part_accuracy, part_cross_entropy
from models.training.sampler import PKBatchSampler


def test_batch_hard_triplet_loss_matches_hand_computation() -> None:
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchors 0 and 1: hardest positive 1, hardest negative 2 -> clipped to 0;
    # anchors 2 and 3: hardest positive sqrt(13), hardest negative 2 -> sqrt(13) - 2 + 0.5.
    expected = (math.sqrt(13) - 1.5) / 2
    assert batch_hard_triplet_loss(points, labels, margin=0.5).item() == pytest.approx(expected, abs=1e-5)


def test_triplet_loss_skips_anchors_without_positive_and_has_finite_gradients() -> None:
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2])
    loss = batch_hard_triplet_loss(points, labels, margin=0.3)
    # only anchors 0 and 1 have a positive (distance 0); their nearest negative is at distance 1
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    loss.backward()
    assert points.grad is not None and torch.isfinite(points.grad).all()
    no_pairs = batch_hard_triplet_loss(points, torch.tensor([0, 1, 2, 3]), margin=0.3)
    assert no_pairs.item() == 0.0 and no_pairs.requires_grad


def test_part_cross_entropy_and_accuracy() -> None:
    labels = torch.tensor([0, 1])
    confident = [torch.tensor([[10.0, -10.0], [-10.0, 10.0]])] * 2
    assert part_cross_entropy(confident, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert part_cross_entropy(confident, labels, label_smoothing=0.2).item() > 0.05
    assert part_accuracy(confident, labels) == 1.0
    assert part_accuracy(confident, torch.tensor([1, 1])) == 0.5


def test_pk_sampler_yields_p_identities_with_k_samples_each() -> None:
    labels = [index // 3 for index in range(30)] + [
        10
    ]  # 10 identities x 3, one identity with a single sample
    sampler = PKBatchSampler(labels, ids_per_batch=4, instances_per_id=2, seed=1)
    assert sampler.batches_per_epoch == 11 // 4
    stream = iter(sampler)
    for _ in range(7):
        batch = next(stream)
        counts = Counter(labels[index] for index in batch)
        assert len(batch) == 8 and len(counts) == 4 and set(counts.values()) == {2}


def test_pk_sampler_is_deterministic_and_resumable() -> None:
    labels = [index // 4 for index in range(40)]
    first = iter(PKBatchSampler(labels, 3, 4, seed=5))
    stream = [next(first) for _ in range(10)]
    again = iter(PKBatchSampler(labels, 3, 4, seed=5))
    assert [next(again) for _ in range(10)] == stream
    resumed = iter(PKBatchSampler(labels, 3, 4, seed=5, start_batch=4))
    assert [next(resumed) for _ in range(6)] == stream[4:]
    other_seed = iter(PKBatchSampler(labels, 3, 4, seed=6))
    assert [next(other_seed) for _ in range(10)] != stream
    with pytest.raises(ValueError, match="identities"):
        PKBatchSampler(labels, 20, 4)


def test_learning_rate_warms_up_then_decays_to_min_ratio() -> None:
    config = TrainConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate_factor(0, 0.0, config) == pytest.approx(0.1)
    assert learning_rate_factor(9, 0.0, config) == pytest.approx(1.0)
    assert learning_rate_factor(50, 0.5, config) == pytest.approx(0.55)
    assert learning_rate_factor(100, 1.0, config) == pytest.approx(0.1)


def test_default_config_is_the_512_dim_resnet18_recipe() -> None:
    config = load_config()
    assert (config.arch, config.num_parts * config.part_dim, config.image_size) == (
        "resnet18",
        512,
        (96, 160),
    )
    assert (config.ids_per_batch, config.instances_per_id, config.label_smoothing) == (8, 4, 0.1)
    assert config.triplet and config.triplet_margin == 0.3


def test_overrides_are_parsed_and_type_checked() -> None:
    assert parse_assignment("lr=3e-4") == ("lr", 3e-4)
    assert parse_assignment("triplet=false") == ("triplet", False)
    assert parse_assignment("optimizer=sgd") == ("optimizer", "sgd")
    config = apply_overrides(TrainConfig(), {"epochs": 3, "optimizer": "sgd"})
    assert config.epochs == 3.0 and config.optimizer == "sgd"
    with pytest.raises(TrainingError, match="unknown config keys"):
        apply_overrides(TrainConfig(), {"learning_rate": 1.0})
    with pytest.raises(TrainingError, match="expects int"):
        apply_overrides(TrainConfig(), {"max_steps": "many"})
    with pytest.raises(TrainingError, match="at least one"):
        TrainConfig(data_dir="x", epochs=0, time_budget_minutes=0).validate()


def _write_identities(root: Path, identities: int, captures: int) -> Path:
    """Folder-per-identity dataset: each identity is a distinct random texture, captures are noisy copies."""
    rng = np.random.default_rng(0)
    for identity in range(identities):
        base = rng.integers(0, 255, (30, 45, 3))
        folder = root / f"block{identity:02d}"
        folder.mkdir(parents=True)
        for capture in range(captures):
            noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"cam_{capture % 2}_frame{capture}.png")
    return root


def _tiny_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    return apply_overrides(
        TrainConfig(),
        {
            "data_dir": str(data),
            "out_dir": str(out),
            "num_parts": 2,
            "part_dim": 8,
            "image_height": 32,
            "image_width": 48,
            "ids_per_batch": 3,
            "instances_per_id": 2,
            "workers": 0,
            "warmup_steps": 1,
            "checkpoint_every_steps": 2,
            "log_every_steps": 1,
            "export_half": False,
            **overrides,
        },
    )


def test_tiny_training_run_exports_a_usable_checkpoint_and_resumes(tmp_path: Path) -> None:
    data = _write_identities(tmp_path / "data", identities=6, captures=3)
    run_dir = tmp_path / "run"
    result = train(_tiny_config(data, run_dir, max_steps=3))
    assert result.steps == 3 and math.isfinite(result.final_loss)
    for name in ("state.pt", "model.safetensors", "history.csv", "training_curve.png", "config.json"):
        assert (run_dir / name).is_file(), name
    assert load_state(run_dir)["step"] == 3
    assert result.metadata.training["identities"] == 6

    embedder = Embedder.load(result.checkpoint)
    assert embedder.model_id == result.metadata.model_id and embedder.embedding_dim == 16
    images = [Image.open(path) for path in sorted((data / "block00").iterdir())]
    fingerprints = embedder.embed(images)
    assert fingerprints.shape == (3, 16)
    assert np.allclose(np.linalg.norm(fingerprints, axis=1), 1.0, atol=1e-5)

    # resume through the CLI with a larger step budget: continues from step 3, not from 0
    exit_code = cli_main(
        ["train", "--resume", str(run_dir), "--max-steps", "5", "--set", "checkpoint_every_steps=10"]
    )
    assert exit_code == 0
    assert load_state(run_dir)["step"] == 5
    with (run_dir / "history.csv").open() as handle:
        steps = [int(float(row["step"])) for row in csv.DictReader(handle)]
    assert steps == [1, 2, 3, 4, 5]


def test_resume_refuses_a_different_dataset(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train(_tiny_config(_write_identities(tmp_path / "a", 4, 2), run_dir, max_steps=1))
    other = _write_identities(tmp_path / "b", 5, 2)
    with pytest.raises(TrainingError, match="different identities"):
        train(_tiny_config(other, run_dir, max_steps=2), resume=run_dir)


def test_bf16_training_runs_where_the_cpu_has_bf16_and_falls_back_elsewhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _write_identities(tmp_path / "data", identities=4, captures=2)
    with caplog.at_level("WARNING", logger="models.training.loop"):
        result = train(_tiny_config(data, tmp_path / "run", max_steps=2, amp=True))
    assert result.steps == 2 and math.isfinite(result.final_loss)
    fell_back = "no native bfloat16" in caplog.text
    assert fell_back is not bf16_autocast_supported(torch.device("cpu"))
    # the exported weights are float32 whichever precision trained them
    embedder = Embedder.load(result.checkpoint)
    assert embedder.embed([Image.open(next((data / "block00").iterdir()))]).dtype == np.float32


def test_training_reduces_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, num_parts=2, part_dim=8).train()
    images = torch.randn(6, 3, 32, 48)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        part_logits, _features = model(images)
        loss = part_cross_entropy(part_logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_extra_datasets_join_the_identities_of_the_first(tmp_path: Path) -> None:
    """The same identity in two datasets is one class; the export records every dataset it saw."""
    first = _write_identities(tmp_path / "cameras", identities=4, captures=2)
    second = _write_identities(tmp_path / "sides", identities=6, captures=2)
    result = train(_tiny_config(first, tmp_path / "run", max_steps=1, extra_data_dirs=[str(second)]))
    assert result.metadata.training["identities"] == 6
    assert result.metadata.training["captures"] == 4 * 2 + 6 * 2
    assert result.metadata.training["extra_datasets"] == [str(second)]
    with pytest.raises(TrainingError, match="list of strings"):
        apply_overrides(TrainConfig(), {"extra_data_dirs": str(second)})
    with pytest.raises(TrainingError, match="is not a directory"):
        train(_tiny_config(first, tmp_path / "bad", max_steps=1, extra_data_dirs=[str(tmp_path / "none")]))


def test_fine_tuning_starts_trunk_and_reductions_from_a_checkpoint(tmp_path: Path) -> None:
    data = _write_identities(tmp_path / "data", identities=4, captures=2)
    source = train(_tiny_config(data, tmp_path / "source", max_steps=2)).checkpoint
    source_state = Embedder.load(source).model.state_dict()

    fresh = build_model("resnet18", num_classes=7, num_parts=2, part_dim=8)
    initialise_from_checkpoint(fresh, source)
    state = fresh.state_dict()
    copied = [key for key in state if key.startswith(("trunk.", "reductions."))]
    assert copied and all(torch.equal(state[key], source_state[key]) for key in copied)
    assert state["classifiers.0.weight"].shape[0] == 7  # this run's identities, not the source's

    with pytest.raises(TrainingError, match="same architecture"):
        initialise_from_checkpoint(build_model("resnet18", num_classes=7, num_parts=4, part_dim=8), source)
    with pytest.raises(TrainingError, match="init_checkpoint"):
        initialise_from_checkpoint(fresh, tmp_path / "missing.safetensors")
    with pytest.raises(TrainingError, match="at most one"):
        _tiny_config(data, tmp_path / "x", init_checkpoint=str(source), pretrained=True).validate()

    # through the CLI: the fine-tuned run exports a checkpoint of the same shape
    exit_code = cli_main(
        [
            "train",
            "--data",
            str(data),
            "--extra-data",
            str(data),
            "--out",
            str(tmp_path / "tuned"),
            "--init-checkpoint",
            str(source),
            "--max-steps",
            "1",
            "--num-parts",
            "2",
            "--part-dim",
            "8",
            "--ids-per-batch",
            "3",
            "--instances-per-id",
            "2",
            "--workers",
            "0",
            "--set",
            "image_height=32",
            "--set",
            "image_width=48",
            "--set",
            "warmup_steps=1",
        ]
    )
    assert exit_code == 0
    assert Embedder.load(tmp_path / "tuned" / "model.safetensors").embedding_dim == 16
