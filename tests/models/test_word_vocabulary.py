"""Visual words: vocabulary learning, quantisation, block similarity, storage in the checkpoint."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from models.runtime.checkpoint import (
    CheckpointError,
    CheckpointMetadata,
    load_checkpoint,
    load_vocabulary,
    read_metadata,
    save_checkpoint,
    store_decision_parameters,
    store_vocabulary,
)
from models.runtime.local_features import DESCRIPTOR_BYTES, LocalFeatures, extract
from models.runtime.pcb import build_model
from models.runtime.thresholds import DecisionParameters
from models.runtime.visual_words import SparseWords, VisualVocabulary, word_similarities
from models.runtime.voting import VotingThresholds
from models.synth import SynthConfig, render_pallet
from models.training.vocabulary import VocabularyConfig, k_majority, learn_vocabulary


@pytest.fixture(scope="module")
def features() -> dict[tuple[str, int, str], LocalFeatures]:
    """Local features of three synthetic pallets, six blocks each, two cameras."""
    config = SynthConfig(pallets=3, cameras=2, frames=1, seed=5)
    return {
        (capture.pallet_id, capture.block, capture.camera): extract(
            Image.open(io.BytesIO(capture.jpeg)).convert("RGB")
        )
        for index in range(3)
        for capture in render_pallet(config, index)
    }


@pytest.fixture(scope="module")
def vocabulary(features: dict[tuple[str, int, str], LocalFeatures]) -> VisualVocabulary:
    return learn_vocabulary(
        [f.descriptors for f in features.values()], VocabularyConfig(branches=16, leaves=64, iterations=5)
    )


def test_the_same_block_shares_more_words_across_cameras_than_other_blocks(
    features: dict[tuple[str, int, str], LocalFeatures], vocabulary: VisualVocabulary
) -> None:
    pallets = sorted({pallet for pallet, _, _ in features})
    words = {key: vocabulary.encode(value) for key, value in features.items()}
    gallery = [words[(other, block, "cam_1")] for other in pallets for block in range(6)]
    found = 0
    for pallet in pallets:
        query = [words[(pallet, block, "cam_2")] for block in range(6)]
        similarities = word_similarities(query, gallery)
        same = [pallets.index(pallet) * 6 + block for block in range(6)]
        found += sum(int(np.argmax(row)) == column for row, column in zip(similarities, same, strict=True))
        # the pallet as a whole: its own blocks share the most words (sum of each query block's best)
        per_pallet = similarities.reshape(6, len(pallets), 6).max(axis=2).sum(axis=0)
        assert int(np.argmax(per_pallet)) == pallets.index(pallet)
    assert found >= 0.75 * 6 * len(pallets)  # a small vocabulary; the shipped one has 32,768 words


def test_encoding_is_a_unit_sparse_vector_over_the_vocabulary(
    features: dict[tuple[str, int, str], LocalFeatures], vocabulary: VisualVocabulary
) -> None:
    block = next(iter(features.values()))
    words = vocabulary.encode(block)
    assert vocabulary.size == 16 * 64 and words.dimensions == vocabulary.size
    assert 0 < len(words) <= len(block)
    assert np.all(np.diff(words.indices) > 0)
    assert np.linalg.norm(words.dense()) == pytest.approx(1.0, abs=1e-5)
    assert word_similarities([words], [words])[0, 0] == pytest.approx(1.0, abs=1e-5)
    again = vocabulary.encode(block)
    assert np.array_equal(again.indices, words.indices) and np.array_equal(again.values, words.values)


def test_a_descriptor_goes_to_the_nearest_leaf_below_the_nearest_top_centroid() -> None:
    zeros, ones = np.zeros(DESCRIPTOR_BYTES, np.uint8), np.full(DESCRIPTOR_BYTES, 255, np.uint8)
    half = np.concatenate([np.zeros(16, np.uint8), np.full(16, 255, np.uint8)])
    vocabulary = VisualVocabulary(
        top=np.stack([zeros, ones]),
        leaves=np.stack([np.stack([zeros, half]), np.stack([half, ones])]),
        idf=np.ones(4, np.float32),
    )
    near_zero = zeros.copy()
    near_zero[0] = 0b111  # 3 bits from "zeros": top 0, leaf 0 -> word 0
    near_ones = ones.copy()
    near_ones[5] = 0  # 8 bits from "ones": top 1, leaf 1 -> word 3
    assert vocabulary.words(np.stack([near_zero, near_ones, zeros, ones])).tolist() == [0, 3, 0, 3]
    assert vocabulary.size == 4
    assert vocabulary.vocabulary_id.startswith("words4-")
    heavier = VisualVocabulary(top=vocabulary.top, leaves=vocabulary.leaves, idf=np.full(4, 2.0, np.float32))
    assert heavier.vocabulary_id != vocabulary.vocabulary_id


def test_empty_blocks_have_no_words(vocabulary: VisualVocabulary) -> None:
    empty = LocalFeatures(
        points=np.zeros((0, 2), np.float32),
        descriptors=np.zeros((0, DESCRIPTOR_BYTES), np.uint8),
        working_size=(320, 200),
    )
    words = vocabulary.encode(empty)
    assert len(words) == 0
    assert word_similarities([words, None], [words])[0, 0] == 0.0


def test_k_majority_separates_two_clear_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 256, (2, DESCRIPTOR_BYTES), dtype=np.uint8)
    members = []
    for centre in centres:
        bits = np.unpackbits(np.repeat(centre[None], 50, axis=0), axis=1)
        flips = rng.random(bits.shape) < 0.05
        members.append(np.packbits(bits ^ flips, axis=1))
    centroids, assignment = k_majority(np.concatenate(members), 2, 10, rng)
    assert sorted(map(bytes, centroids)) == sorted(map(bytes, centres))
    assert len(set(assignment[:50])) == 1 and len(set(assignment[50:])) == 1
    assert assignment[0] != assignment[50]


def test_learning_needs_descriptors() -> None:
    with pytest.raises(ValueError, match="no descriptors"):
        learn_vocabulary([np.zeros((0, DESCRIPTOR_BYTES), np.uint8)])


@pytest.mark.parametrize(
    ("indices", "values", "message"),
    [
        ([3, 1], [0.5, 0.5], "strictly increasing"),
        ([0, 10], [0.5, 0.5], r"\[0, dimensions\)"),
        ([1], [0.5, 0.5], "one length"),
    ],
)
def test_malformed_word_vectors_are_refused(indices: list[int], values: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SparseWords(np.array(indices, np.int32), np.array(values, np.float32), dimensions=10)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("resnet18", num_parts=2, part_dim=8)
    path = tmp_path / "model.safetensors"
    metadata = CheckpointMetadata.for_model(model, image_height=32, image_width=48)
    save_checkpoint(model, path, metadata=metadata)
    return path


def test_the_vocabulary_travels_in_the_checkpoint_without_changing_the_model(
    checkpoint: Path, vocabulary: VisualVocabulary
) -> None:
    before = read_metadata(checkpoint)
    assert before.vocabulary_id == "" and load_vocabulary(checkpoint) is None
    stored = store_vocabulary(checkpoint, vocabulary)
    assert stored.model_id == before.model_id
    assert stored.vocabulary_id == vocabulary.vocabulary_id == read_metadata(checkpoint).vocabulary_id
    loaded = load_vocabulary(checkpoint)
    assert loaded is not None and loaded.vocabulary_id == vocabulary.vocabulary_id
    model, metadata = load_checkpoint(checkpoint)  # the vocabulary's tensors are not weights
    assert metadata.model_id == before.model_id and model.num_parts == 2
    # calibrating afterwards keeps the vocabulary
    store_decision_parameters(
        checkpoint,
        DecisionParameters(
            model_id=before.model_id,
            thresholds=VotingThresholds(block_threshold=0.6, min_votes=2, score_threshold=0.6),
        ),
    )
    kept = load_vocabulary(checkpoint)
    assert kept is not None and kept.vocabulary_id == vocabulary.vocabulary_id


def test_a_vocabulary_that_is_not_the_one_named_is_refused(
    checkpoint: Path, vocabulary: VisualVocabulary
) -> None:
    store_vocabulary(checkpoint, vocabulary)
    tensors = load_file(str(checkpoint))
    tensors["visual_words.idf"] = tensors["visual_words.idf"] * 2
    metadata = read_metadata(checkpoint)
    save_file(tensors, str(checkpoint), metadata=metadata.to_header())
    with pytest.raises(CheckpointError, match="names vocabulary"):
        load_vocabulary(checkpoint)


def test_words_of_different_vocabularies_are_not_compared() -> None:
    small = SparseWords(np.array([1], np.int32), np.array([1.0], np.float32), dimensions=10)
    large = SparseWords(np.array([1], np.int32), np.array([1.0], np.float32), dimensions=20)
    assert word_similarities([small], [small])[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="different vocabularies"):
        word_similarities([small], [large])
