"""Visual words in the benchmark: the seeded gallery stores and indexes them as the service does, the
identify breakdown and the latency section time the word stage, and ``--no-words`` serves the model without
its vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from app.cli import main
from app.db.migrations import upgrade_to_head
from app.matching.repository import FingerprintRepository, words_index_valid
from app.settings import Settings
from bench.captures import render_pallets
from bench.gallery import Gallery, perturbed_words
from bench.runner import checkpoint_without_vocabulary, scratch_database
from models.runtime.checkpoint import load_vocabulary, read_metadata
from models.runtime.images import decode_image
from models.runtime.local_features import LocalFeatures, extract
from models.runtime.thresholds import GeometryParameters
from models.runtime.visual_words import SparseWords, VisualVocabulary
from models.synth import BLOCKS_PER_PALLET
from models.training.vocabulary import VocabularyConfig, learn_vocabulary

MODEL = "bench-words-test"
THRESHOLDS = (("BLOCK_THRESHOLD", "0.995"), ("MIN_VOTES", "3"), ("SCORE_THRESHOLD", "0.995"))


@pytest.fixture(scope="module")
def enrol_features() -> list[list[LocalFeatures]]:
    """Local features of three rendered pallets' enrol blocks, extracted as the service extracts them."""
    extractor = GeometryParameters().extractor
    return [
        [extract(decode_image(blob, max_pixels=10_000_000, name="test"), extractor) for blob in pallet.enrol]
        for pallet in render_pallets(3, seed=0)
    ]


@pytest.fixture(scope="module")
def vocabulary(enrol_features: list[list[LocalFeatures]]) -> VisualVocabulary:
    """128 words learned from the rendered blocks' descriptors."""
    descriptors = [features.descriptors for blocks in enrol_features for features in blocks]
    return learn_vocabulary(descriptors, VocabularyConfig(branches=8, leaves=16, iterations=5))


def unit_fingerprints(pallets: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((pallets, BLOCKS_PER_PALLET, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=2, keepdims=True)


def seeded_gallery(
    database_url: str, enrol_features: list[list[LocalFeatures]], vocabulary: VisualVocabulary | None = None
) -> Gallery:
    """A bench gallery on ``database_url``: its real pallets are the rendered blocks (random fingerprints)."""
    return Gallery(
        database_url,
        model_id=MODEL,
        num_parts=1,
        real_fingerprints=unit_fingerprints(len(enrol_features), 64, seed=1),
        real_features=enrol_features,
        noise=0.5,
        seed=0,
        vocabulary=vocabulary,
    )


def test_the_gallery_stores_the_services_words_and_indexes_them(
    database_server_url: str, enrol_features: list[list[LocalFeatures]], vocabulary: VisualVocabulary
) -> None:
    with scratch_database(database_server_url, None) as database_url:
        upgrade_to_head(database_url)
        gallery = seeded_gallery(database_url, enrol_features, vocabulary)
        first = gallery.grow_to(20)
        grown = gallery.grow_to(30)

        for stats in (first, grown):
            assert stats.words_index_build_s is not None and stats.words_index_build_s > 0
            assert stats.words_index_bytes is not None and stats.words_index_bytes > 0
            assert stats.words_bytes is not None and stats.words_bytes > 0
        assert grown.words_bytes is not None and first.words_bytes is not None
        assert grown.words_bytes > first.words_bytes
        engine = create_engine(database_url)
        try:
            with Session(engine) as session:
                counts = session.execute(
                    text(
                        "SELECT count(*), count(w.words), count(DISTINCT w.vocabulary_id), "
                        "min(w.vocabulary_id) FROM fingerprints f "
                        "LEFT JOIN block_words w ON w.fingerprint_id = f.id"
                    )
                ).one()
                assert tuple(counts) == (180, 180, 1, vocabulary.vocabulary_id)
                assert words_index_valid(session, MODEL, vocabulary.vocabulary_id) is True
                repository = FingerprintRepository(session)
                real = gallery.real_pallet_ids()
                stored = repository.latest_words(real, model_id=MODEL, vocabulary_id=vocabulary.vocabulary_id)
                for pallet, features in zip(real, enrol_features, strict=True):
                    for words, block in zip(stored[pallet].words, features, strict=True):
                        assert words is not None
                        np.testing.assert_array_equal(words.indices, vocabulary.encode(block).indices)
                # each real block's own words find its pallet first through the service's word search
                repository.configure_search(ef_search=100)
                for pallet, features in zip(real, enrol_features, strict=True):
                    per_block = repository.nearest_words_per_block(
                        [vocabulary.encode(block) for block in features],
                        model_id=MODEL,
                        vocabulary_id=vocabulary.vocabulary_id,
                        limit=5,
                    )
                    assert [block[0].pallet_id for block in per_block] == [pallet] * BLOCKS_PER_PALLET
        finally:
            engine.dispose()


def test_a_gallery_without_vocabulary_stores_no_words(
    database_server_url: str, enrol_features: list[list[LocalFeatures]]
) -> None:
    with scratch_database(database_server_url, None) as database_url:
        upgrade_to_head(database_url)
        gallery = seeded_gallery(database_url, enrol_features)
        stats = gallery.grow_to(10)
        assert (stats.words_index_build_s, stats.words_index_bytes, stats.words_bytes) == (None, None, None)
        engine = create_engine(database_url)
        try:
            with engine.connect() as connection:
                assert connection.execute(text("SELECT count(*) FROM block_words")).scalar() == 0
        finally:
            engine.dispose()


def test_perturbed_words_keep_the_real_blocks_statistics() -> None:
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(10):
        indices = np.sort(rng.choice(4096, size=300, replace=False)).astype(np.int32)
        values = rng.random(300).astype(np.float32) + 0.1
        pool.append(SparseWords(indices, values / np.linalg.norm(values), 4096))

    mixed = perturbed_words(pool, 200, rng=np.random.default_rng(1))

    assert len(mixed) == 200
    for words in mixed:
        assert words.dimensions == 4096 and 250 <= len(words) <= 300
        assert np.isclose(np.linalg.norm(words.values), 1.0, atol=1e-5)
        assert set(words.indices.tolist()) <= {i for block in pool for i in block.indices.tolist()}
        # about half of the words of the block it was mixed from, far fewer of any other's
        shared = sorted(len(np.intersect1d(words.indices, block.indices)) for block in pool)
        assert shared[-1] > 120 and shared[-2] < 60
    # two synthetic blocks are distinct even when mixed from the same real block
    assert len({words.indices.tobytes() for words in mixed}) == 200
    with pytest.raises(ValueError, match="no real block"):
        perturbed_words([SparseWords(np.zeros(0, np.int32), np.zeros(0, np.float32), 4096)], 1, rng=rng)


def test_the_no_words_checkpoint_is_the_same_model_without_vocabulary(
    words_checkpoint: Path, tmp_path: Path
) -> None:
    stripped = checkpoint_without_vocabulary(words_checkpoint, tmp_path)

    assert load_vocabulary(words_checkpoint) is not None and load_vocabulary(stripped) is None
    original, copy = read_metadata(words_checkpoint), read_metadata(stripped)
    assert copy.model_id == original.model_id and copy.decision == original.decision
    assert copy.vocabulary_id == "" and original.vocabulary_id


def test_the_latency_section_times_the_word_stage(
    words_checkpoint: Path,
    vocabulary: VisualVocabulary,
    database_server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PALLETREID_DATABASE_URL", database_server_url)
    monkeypatch.setenv("PALLETREID_MODEL_PRECISION", "fp32")
    for name, value in THRESHOLDS:
        monkeypatch.setenv(f"PALLETREID_{name}", value)

    code = main(["bench", "--quick", "--sections", "latency", "--checkpoint", str(words_checkpoint)])

    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"]["vocabulary_id"] == vocabulary.vocabulary_id
    (latency,) = result["latency"]["galleries"]
    assert all(run["failed"] == 0 for run in latency["runs"])
    breakdown = latency["breakdown"]
    for kind in ("known", "unknown"):
        figures = breakdown["identify_db_by_kind"][kind]
        assert figures["words"]["p50_ms"] > 0 and figures["no_words"]["p50_ms"] > 0
        assert figures["words_vs_no_words_p50"] > 0
    assert breakdown["identify_db"] == breakdown["identify_db_by_kind"]["known"]["words"]
    words = breakdown["words"]
    assert words["encode_six_blocks"]["p50_ms"] > 0
    assert {kind for kind in words["by_kind"]} == {"known", "unknown"}
    assert words["by_kind"]["unknown"]["knn"]["p50_ms"] > 0
    sweep = words["ef_sweep"]
    assert Settings().hnsw_ef_search in [row["ef_search"] for row in sweep]
    # a known dispatch's own pallet is among its word shortlist (its enrol blocks are stored with words)
    assert all(0.0 <= row["true_pallet_shortlisted"] <= 1.0 for row in sweep)
    assert max(row["true_pallet_shortlisted"] for row in sweep) > 0
    gallery = latency["gallery"]
    assert gallery["pallets"] == latency["pallets"]
    assert gallery["words_index_build_s"] > 0 and gallery["words_index_bytes"] > 0


def test_the_no_words_option_serves_the_model_without_its_word_stage(
    words_checkpoint: Path,
    database_server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PALLETREID_DATABASE_URL", database_server_url)
    monkeypatch.setenv("PALLETREID_MODEL_PRECISION", "fp32")
    for name, value in THRESHOLDS:
        monkeypatch.setenv(f"PALLETREID_{name}", value)

    code = main(
        ["bench", "--quick", "--sections", "latency", "--no-words", "--checkpoint", str(words_checkpoint)]
    )

    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"]["vocabulary_id"] is None
    breakdown = result["latency"]["galleries"][0]["breakdown"]
    assert "words" not in breakdown
    assert set(breakdown["identify_db_by_kind"]["unknown"]) >= {"no_words"}
    assert "words" not in breakdown["identify_db_by_kind"]["unknown"]
    assert result["latency"]["galleries"][0]["gallery"]["words_index_bytes"] is None


def test_the_search_settings_keep_custom_plans(session: Session) -> None:
    """psycopg prepares a statement after its fifth execution on a connection, and PostgreSQL may then run
    its generic plan: for the word k-NN a sequential scan of every stored block (this bench measured
    0.1 s -> 3 s per dispatch at 10 000 pallets). The service's search settings forbid that."""
    FingerprintRepository(session).configure_search(ef_search=40)

    assert session.scalar(text("SELECT current_setting('plan_cache_mode')")) == "force_custom_plan"
