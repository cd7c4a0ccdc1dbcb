"""The verification bench section: extraction, matching and per-dispatch figures from a tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from app.settings import Settings
from bench.captures import render_pallets
from bench.verification import run_verification
from models.runtime.images import decode_image
from models.runtime.inference import Embedder
from models.runtime.local_features import extract
from models.runtime.thresholds import DecisionParameters
from models.runtime.voting import VotingThresholds
from models.training.vocabulary import VocabularyConfig, learn_vocabulary


def test_verification_figures_from_rendered_pallets(tiny_checkpoint: Path) -> None:
    embedder = Embedder.load(tiny_checkpoint, num_threads=1)
    decision = DecisionParameters(model_id=embedder.model_id, thresholds=VotingThresholds(0.99, 3, 0.99))
    pallets = render_pallets(3, seed=0)

    result = run_verification(embedder, pallets, decision, Settings(), min_seconds=0.05)

    assert result["extract_ms_per_block"] > 0 and result["extract_blocks_per_s"] > 0
    assert set(result["match_ms_per_pair"]) == {"same_block", "different_pallets"}
    assert all(value > 0 for value in result["match_ms_per_pair"].values())
    inliers = result["match_inliers"]
    # Captures of the same block agree on a homography far more often than blocks of different pallets.
    assert inliers["same_block"]["median"] > inliers["different_pallets"]["median"]
    dispatch = result["dispatch"]
    assert dispatch["enrolled_pallets"] == 1
    assert (dispatch["known"]["dispatches"], dispatch["unknown"]["dispatches"]) == (1, 2)
    for kind in ("known", "unknown"):
        figures = dispatch[kind]
        assert sum(figures["outcomes"].values()) == figures["dispatches"]
        assert 0 < figures["extract_ms"]["p50_ms"] <= figures["stage_ms"]["p50_ms"]
    # Unknown pallets are never matched to the one enrolled pallet.
    assert "matched" not in dispatch["unknown"]["outcomes"]


def test_verification_with_words_reports_the_stage_with_and_without_word_candidates(
    tiny_checkpoint: Path,
) -> None:
    embedder = Embedder.load(tiny_checkpoint, num_threads=1)
    decision = DecisionParameters(model_id=embedder.model_id, thresholds=VotingThresholds(0.99, 3, 0.99))
    pallets = render_pallets(4, seed=0)
    extractor = decision.geometry.extractor
    descriptors = [
        extract(decode_image(blob, max_pixels=10_000_000, name="test"), extractor).descriptors
        for pallet in pallets
        for blob in pallet.enrol
    ]
    vocabulary = learn_vocabulary(descriptors, VocabularyConfig(branches=8, leaves=16, iterations=5))

    result = run_verification(
        embedder, pallets, decision, Settings(), min_seconds=0.05, vocabulary=vocabulary
    )

    assert result["vocabulary_id"] == vocabulary.vocabulary_id
    dispatch = result["dispatch"]
    for kind in ("known", "unknown"):
        figures = dispatch[kind]
        assert sum(figures["outcomes_no_words"].values()) == figures["dispatches"]
        assert figures["stage_no_words_ms"]["p50_ms"] > 0 and figures["stage_words_vs_no_words_p50"] > 0
        # the word candidates only add checks to those of the network's candidates
        assert figures["candidates_checked_mean"] >= figures["candidates_checked_mean_no_words"]
    assert "matched" not in dispatch["unknown"]["outcomes"]


def test_too_few_pallets_are_refused(tiny_checkpoint: Path) -> None:
    embedder = Embedder.load(tiny_checkpoint, num_threads=1)
    decision = DecisionParameters(model_id=embedder.model_id, thresholds=VotingThresholds(0.99, 3, 0.99))
    with pytest.raises(ValueError, match="two pallets"):
        run_verification(embedder, render_pallets(1, seed=0), decision, Settings(), min_seconds=0.01)


def test_bench_command_runs_the_verification_section_alone(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in (("BLOCK_THRESHOLD", "0.995"), ("MIN_VOTES", "3"), ("SCORE_THRESHOLD", "0.995")):
        monkeypatch.setenv(f"PALLETREID_{name}", value)

    assert main(["bench", "--quick", "--sections", "verification", "--checkpoint", str(tiny_checkpoint)]) == 0

    result = json.loads(capsys.readouterr().out)
    assert set(result["verification"]) >= {"extract_ms_per_block", "match_ms_per_pair", "dispatch"}
    assert "verification" in result["durations_s"] and "latency" not in result
