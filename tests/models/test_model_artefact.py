"""A model is one artefact: its checkpoint header carries the calibrated decision parameters."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.runtime.checkpoint import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    CheckpointMetadata,
    read_metadata,
    save_checkpoint,
    store_decision_parameters,
)
from models.runtime.pcb import build_model
from models.runtime.thresholds import (
    DecisionParameters,
    RuleSettings,
    read_decision_parameters,
    read_thresholds,
    write_decision_parameters,
)
from models.runtime.voting import VotingThresholds


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("resnet18", num_parts=2, part_dim=8)
    path = tmp_path / "model.safetensors"
    save_checkpoint(
        model, path, metadata=CheckpointMetadata.for_model(model, image_height=32, image_width=48)
    )
    return path


def _parameters(model_id: str) -> DecisionParameters:
    return DecisionParameters(
        model_id=model_id,
        thresholds=VotingThresholds(block_threshold=0.6, min_votes=3, score_threshold=0.55),
        rule=RuleSettings(top_k=7, shortlist_size=4, captures_per_pallet=2),
        calibration={"dataset": "calib", "target_met": True},
    )


def test_decision_parameters_round_trip_through_json(tmp_path: Path) -> None:
    parameters = _parameters("resnet18-p2x8-abc")
    path = write_decision_parameters(tmp_path / "thresholds.json", parameters)
    assert json.loads(path.read_text())["format"] == 2
    assert read_decision_parameters(path) == parameters
    assert read_thresholds(path) == parameters.thresholds


def test_version_1_files_are_read_with_the_rule_defaults(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(
        json.dumps(
            {
                "block_threshold": 0.7,
                "min_votes": 2,
                "score_threshold": 0.64,
                "model_id": "m",
                "top_k": 12,
                "shortlist_size": 10,
                "dataset": "data/calib",
            }
        )
    )
    parameters = read_decision_parameters(path)
    assert parameters.thresholds == VotingThresholds(0.7, 2, 0.64)
    assert parameters.rule == RuleSettings(top_k=12, shortlist_size=10)
    assert parameters.calibration == {"dataset": "data/calib"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["rule"].update(min_inliers=12), "unknown keys"),
        (lambda d: d["thresholds"].pop("min_votes"), "lacks 'min_votes'"),
        (lambda d: d["thresholds"].update(min_votes="two"), "must be int"),
        (lambda d: d["thresholds"].update(score_threshold=3.0), "score_threshold must lie"),
        (lambda d: d.update(format=3), "format 3"),
    ],
)
def test_malformed_decision_parameters_are_refused(change: object, message: str, tmp_path: Path) -> None:
    data = _parameters("m").to_dict()
    change(data)  # type: ignore[operator]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        read_decision_parameters(path)


def test_stored_parameters_travel_in_the_header_and_keep_the_weights(checkpoint: Path) -> None:
    before = read_metadata(checkpoint)
    weights = load_file(str(checkpoint))
    assert before.decision is None
    parameters = _parameters(before.model_id)
    store_decision_parameters(checkpoint, parameters)
    after = read_metadata(checkpoint)
    assert after.decision == parameters
    assert dataclasses.replace(after, decision=None) == before
    stored = load_file(str(checkpoint))
    assert stored.keys() == weights.keys() and all(torch.equal(stored[k], weights[k]) for k in weights)


def test_parameters_of_another_model_are_refused(checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="calibrated for resnet18-p2x8-000000000000"):
        store_decision_parameters(checkpoint, _parameters("resnet18-p2x8-000000000000"))
    assert read_metadata(checkpoint).decision is None


def test_a_header_whose_parameters_name_another_model_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    metadata = read_metadata(checkpoint)
    forged = dataclasses.replace(metadata, decision=_parameters("another-model"))
    path = tmp_path / "forged.safetensors"
    save_file(load_file(str(checkpoint)), str(path), metadata=forged.to_header())
    with pytest.raises(CheckpointError, match="not for its own weights"):
        read_metadata(path)


def test_shipped_checkpoint_carries_its_calibrated_decision_parameters() -> None:
    metadata = read_metadata(DEFAULT_CHECKPOINT)
    assert metadata.embedding_dim == 512 and metadata.image_size == (96, 160)
    decision = metadata.decision
    assert decision is not None and decision.model_id == metadata.model_id
    assert decision.thresholds == VotingThresholds(block_threshold=0.6, min_votes=4, score_threshold=0.645)
    assert decision.rule == RuleSettings(
        top_k=50, shortlist_size=30, captures_per_pallet=3, fingerprint_normalisation="l2"
    )
    assert decision.calibration["target_met"] is True
