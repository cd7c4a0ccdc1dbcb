"""The service refuses to start with a model it cannot use, and says what to do."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.errors import ConfigurationError
from app.main import create_app
from app.settings import Settings
from models.runtime.checkpoint import (
    read_metadata,
    store_decision_parameters,
)
from models.runtime.thresholds import DecisionParameters, RuleSettings, write_decision_parameters
from models.runtime.voting import GeometryParameters, VotingThresholds


def _start(settings: Settings) -> None:
    with TestClient(create_app(settings)):
        pass


def test_missing_model_file_refuses_to_start(
    database_url: str, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    with pytest.raises(ConfigurationError, match="PALLETREID_MODEL_PATH") as refused:
        _start(make_settings(database_url, tmp_path / "missing.safetensors"))
    assert "does not exist" in str(refused.value)


def test_corrupt_model_file_refuses_to_start(
    database_url: str, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    path = tmp_path / "lfs-pointer.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ConfigurationError, match="PALLETREID_MODEL_PATH"):
        _start(make_settings(database_url, path))


def _calibrated_copy(tiny_checkpoint: Path, tmp_path: Path) -> tuple[Path, DecisionParameters]:
    """The tiny checkpoint with decision parameters stored in its header."""
    path = tmp_path / "calibrated.safetensors"
    shutil.copy(tiny_checkpoint, path)
    parameters = DecisionParameters(
        model_id=read_metadata(path).model_id,
        thresholds=VotingThresholds(block_threshold=0.99, min_votes=2, score_threshold=0.98),
        rule=RuleSettings(top_k=8, shortlist_size=5, captures_per_pallet=2),
        geometry=GeometryParameters(
            candidates_checked=3, match_inliers=150, review_inliers=90, word_candidates_checked=2
        ),
    )
    store_decision_parameters(path, parameters)
    return path, parameters


def _no_overrides(database_url: str, model_path: Path, **values: object) -> Settings:
    return Settings.model_validate(
        {"database_url": database_url, "model_path": model_path, "model_threads": 1, **values}
    )


def test_readyz_shows_the_checkpoint_parameters_and_the_overrides(
    database_url: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    path, parameters = _calibrated_copy(tiny_checkpoint, tmp_path)
    with TestClient(create_app(_no_overrides(database_url, path))) as client:
        shown = client.get("/readyz").json()["decision_parameters"]
    assert shown == {
        "model_id": parameters.model_id,
        "block_threshold": 0.99,
        "min_votes": 2,
        "score_threshold": 0.98,
        "top_k": 8,
        "shortlist_size": 5,
        "captures_per_pallet": 2,
        "fingerprint_normalisation": "l2",
        "geometry": {
            "candidates_checked": 3,
            "captures_checked": 1,
            "block_inliers": 25,
            "match_inliers": 150,
            "match_blocks": 2,
            "min_margin": 50,
            "review_inliers": 90,
            "word_top_k": 20,
            "word_shortlist_size": 30,
            "word_candidates_checked": 2,
            "review_when_network_matches": False,
        },
        "source": f"checkpoint {path}",
        "overridden": [],
    }
    settings = _no_overrides(database_url, path, min_votes=4, top_k=20)
    with TestClient(create_app(settings)) as client:
        shown = client.get("/readyz").json()["decision_parameters"]
        assert client.app.state.matching_config.top_k == 20  # type: ignore[attr-defined]
        assert client.app.state.matching_config.geometry.match_inliers == 150  # type: ignore[attr-defined]
    assert (shown["min_votes"], shown["top_k"], shown["block_threshold"]) == (4, 20, 0.99)
    assert shown["overridden"] == ["PALLETREID_MIN_VOTES", "PALLETREID_TOP_K"]


def test_a_thresholds_file_of_another_model_refuses_to_start(
    database_url: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    path, parameters = _calibrated_copy(tiny_checkpoint, tmp_path)
    other = write_decision_parameters(
        tmp_path / "other.json", dataclasses.replace(parameters, model_id="resnet18-p4x128-0123456789ab")
    )
    with pytest.raises(ConfigurationError, match="calibrated for model resnet18-p4x128-0123456789ab"):
        _start(_no_overrides(database_url, path, thresholds_file=other))

    own = write_decision_parameters(
        tmp_path / "own.json",
        dataclasses.replace(parameters, thresholds=VotingThresholds(0.5, 1, 0.5)),
    )
    with TestClient(create_app(_no_overrides(database_url, path, thresholds_file=own))) as client:
        shown = client.get("/readyz").json()["decision_parameters"]
    assert (shown["source"], shown["block_threshold"]) == (f"file {own}", 0.5)


def test_an_uncalibrated_model_needs_thresholds(database_url: str, tiny_checkpoint: Path) -> None:
    with pytest.raises(ConfigurationError, match="carries no calibrated decision parameters") as refused:
        _start(_no_overrides(database_url, tiny_checkpoint, block_threshold=0.9))
    assert "PALLETREID_MIN_VOTES, PALLETREID_SCORE_THRESHOLD" in str(refused.value)
