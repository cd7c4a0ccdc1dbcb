"""Pallet-level protocol, plots, and the ``palletreid evaluate`` command end to end on a tiny model."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from models.evaluation.evaluate import block_pair_similarities
from models.evaluation.open_set import OpenSetFigures
from models.evaluation.plots import plot_cmc, plot_det, plot_score_histogram
from models.evaluation.protocol import build_open_set, split_unknown_pallets
from models.runtime.checkpoint import CheckpointMetadata, read_metadata, save_checkpoint
from models.runtime.pcb import build_model
from models.runtime.thresholds import (
    DecisionParameters,
    read_decision_parameters,
    read_thresholds,
    write_decision_parameters,
)
from models.runtime.voting import DEFAULT_TOP_K, VotingThresholds
from models.training.data import BlockImageRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_unknown_split_is_deterministic_and_keeps_a_known_pallet() -> None:
    assert split_unknown_pallets(["c", "a", "d", "b", "a"], 0.5) == (["a", "b"], ["c", "d"])
    assert split_unknown_pallets(["a", "b", "c"], 0.0) == (["a", "b", "c"], [])
    assert split_unknown_pallets(["a", "b"], 0.99) == (["a"], ["b"])
    with pytest.raises(ValueError):
        split_unknown_pallets(["a"], 1.0)


def _captures(pallets: list[str], cameras: list[str]) -> list[BlockImageRecord]:
    return [
        BlockImageRecord(
            path=Path(f"{pallet}_{position}_{camera}.png"),
            identity=f"{pallet}/{position}",
            pallet=pallet,
            position=position,
            camera=camera,
            frame="0",
        )
        for pallet in pallets
        for camera in cameras
        for position in range(6)
    ]


def test_open_set_protocol_uses_known_receipts_and_permuted_dispatch_queries() -> None:
    captures = _captures(["p1", "p2", "p3", "p4"], ["cam_0", "cam_1"])
    embeddings = np.arange(len(captures), dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)

    protocol = build_open_set(captures, embeddings, ["cam_0"], unknown_fraction=0.5, seed=3)

    assert protocol.known_pallets == ["p1", "p2"]
    assert protocol.unknown_pallets == ["p3", "p4"]
    assert protocol.gallery.pallets == ("p1",) * 6 + ("p2",) * 6
    gallery_rows = [i for i, c in enumerate(captures) if c.camera == "cam_0" and c.pallet in {"p1", "p2"}]
    np.testing.assert_array_equal(protocol.gallery.embeddings, embeddings[gallery_rows])
    assert [(q.pallet, q.known) for q in protocol.queries] == [
        ("p1", True),
        ("p2", True),
        ("p3", False),
        ("p4", False),
    ]
    assert protocol.query_cameras == ["cam_1"]
    for query in protocol.queries:
        rows = [i for i, c in enumerate(captures) if c.camera == "cam_1" and c.pallet == query.pallet]
        # Same blocks as the dispatch capture, in a shuffled order.
        assert sorted(query.embeddings[:, 0].tolist()) == sorted(embeddings[rows, 0].tolist())
    assert any(
        query.embeddings[:, 0].tolist() != sorted(query.embeddings[:, 0].tolist())
        for query in protocol.queries
    )


def test_block_pairs_are_same_block_vs_other_pallet_across_cameras() -> None:
    captures = _captures(["p1", "p2"], ["cam_0", "cam_1"])
    query = [i for i, c in enumerate(captures) if c.camera == "cam_1"]
    gallery = [i for i, c in enumerate(captures) if c.camera == "cam_0"]
    # Similarity encodes the pair: 0.9 same block, 0.5 same pallet other block, 0.1 other pallet.
    similarity = np.array(
        [
            [
                0.9
                if captures[q].identity == captures[g].identity
                else 0.5
                if captures[q].pallet == captures[g].pallet
                else 0.1
                for g in gallery
            ]
            for q in query
        ]
    )

    genuine, impostor = block_pair_similarities(captures, query, gallery, 1.0 - similarity)

    np.testing.assert_allclose(genuine, np.full(12, 0.9))
    np.testing.assert_allclose(impostor, np.full(2 * 6 * 6, 0.1))


def test_plots_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    curve = [
        (
            t,
            OpenSetFigures(
                identification_rate=1.0 - t,
                false_reject_rate=t,
                misidentification_rate=0.0,
                unknown_registered_rate=t,
                unknown_false_match_rate=1.0 - t,
                num_known=10,
                num_unknown=10,
            ),
        )
        for t in np.linspace(0, 1, 11)
    ]
    paths = [
        plot_cmc(np.linspace(0.5, 1.0, 30), tmp_path / "cmc.png"),
        plot_det(curve, tmp_path / "det.png", chosen_score_threshold=0.4),
        plot_score_histogram(
            rng.normal(0.8, 0.05, 100),
            rng.normal(0.2, 0.1, 300),
            tmp_path / "hist.png",
            threshold=0.5,
            title="scores",
            xlabel="score",
        ),
    ]
    for path in paths:
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        assert path.stat().st_size > 5000


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, num_parts=2, part_dim=8)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(
        model, path, metadata=CheckpointMetadata.for_model(model, image_height=32, image_width=48)
    )
    return path


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 pallets x 6 blocks x 2 cameras: each block a fixed random texture, each camera adds some noise."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rows = []
    for pallet in range(4):
        for block in range(6):
            texture = rng.integers(0, 255, (24, 40, 3))
            for camera in range(2):
                image = np.clip(texture + rng.normal(0, 8, texture.shape), 0, 255).astype(np.uint8)
                relative = f"images/p{pallet}_b{block}_cam_{camera}.png"
                (root / "images").mkdir(exist_ok=True)
                Image.fromarray(image).save(root / relative)
                rows.append(
                    {
                        "pallet_id": f"P{pallet}",
                        "path": relative,
                        "camera": f"cam_{camera}",
                        "frame": "0",
                        "block": block,
                    }
                )
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["pallet_id", "path", "camera", "frame", "block"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_evaluate_command_calibrates_then_applies_thresholds(
    tiny_checkpoint: Path,
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    calibration_out = tmp_path / "calib"
    common = ["evaluate", "--data", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint), "--threads", "1"]

    assert main([*common, "--out", str(calibration_out), "--calibrate", "--batch-size", "5"]) == 0

    report = json.loads((calibration_out / "report.json").read_text())
    block = report["block"]
    assert block["num_queries"] == 24 and block["num_gallery"] == 24 and block["num_identities"] == 24
    assert 0.0 <= block["rank1"] <= block["rank5"] <= block["rank10"] <= 1.0
    pallet = report["pallet"]
    assert (pallet["num_known_pallets"], pallet["num_unknown_pallets"]) == (2, 2)
    assert (pallet["num_known_queries"], pallet["num_unknown_queries"]) == (2, 2)
    assert pallet["thresholds_source"] == "calibrated"
    figures = pallet["at_thresholds"]
    assert figures["identification_rate"] + figures["false_reject_rate"] + figures[
        "misidentification_rate"
    ] == pytest.approx(1.0)
    assert figures["unknown_registered_rate"] + figures["unknown_false_match_rate"] == pytest.approx(1.0)
    plots = ["cmc.png", "det.png", "pallet_score_hist.png", "block_similarity_hist.png", "inlier_hist.png"]
    for name in plots:
        assert (calibration_out / name).read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(report["plots"]) == sorted(plots)
    chosen = read_thresholds(calibration_out / "thresholds.json")
    assert chosen == read_thresholds(calibration_out / "report.json")
    assert "rank-1" in capsys.readouterr().out

    held_out = tmp_path / "held_out"
    held_out.mkdir()
    (held_out / "embeddings.npz").write_bytes((calibration_out / "embeddings.npz").read_bytes())
    thresholds_file = calibration_out / "thresholds.json"
    with caplog.at_level(logging.INFO, logger="models.evaluation.evaluate"):
        assert main([*common, "--out", str(held_out), "--thresholds-from", str(thresholds_file)]) == 0
    assert any("reusing embeddings" in record.message for record in caplog.records)

    applied = json.loads((held_out / "report.json").read_text())["pallet"]
    assert applied["thresholds_source"] == str(thresholds_file)
    assert applied["thresholds"] == pallet["thresholds"]
    assert applied["calibration"] is None
    assert applied["at_thresholds"] == figures
    assert not (held_out / "thresholds.json").exists()


def test_folder_layout_gets_block_level_only(tiny_checkpoint: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "folders"
    for identity in ("a", "b", "c"):
        (root / identity).mkdir(parents=True)
        texture = rng.integers(0, 255, (24, 40, 3))
        for camera in (1, 2):
            image = np.clip(texture + rng.normal(0, 8, texture.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / identity / f"{identity}_cam_{camera}_0.png")
    out = tmp_path / "out"

    assert (
        main(["evaluate", "--data", str(root), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    )

    report = json.loads((out / "report.json").read_text())
    assert report["pallet"] is None
    assert report["block"]["num_queries"] == 3 and report["block"]["num_gallery"] == 3
    assert sorted(report["plots"]) == ["block_similarity_hist.png", "cmc.png"]


def test_calibration_without_unknown_pallets_fails_cleanly(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    arguments = ["evaluate", "--data", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint)]
    arguments += ["--out", str(tmp_path), "--calibrate", "--unknown-fraction", "0"]
    assert main(arguments) == 1
    assert "unknown" in caplog.text
    assert not (tmp_path / "report.json").exists()


def test_without_unknown_pallets_open_set_rates_are_null(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    thresholds = write_decision_parameters(
        tmp_path / "t.json", DecisionParameters(model_id="any", thresholds=VotingThresholds(0.0, 1, 0.0))
    )
    arguments = ["evaluate", "--data", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint)]
    arguments += [
        "--out",
        str(tmp_path / "out"),
        "--unknown-fraction",
        "0",
        "--thresholds-from",
        str(thresholds),
    ]

    assert main(arguments) == 0

    pallet = json.loads((tmp_path / "out" / "report.json").read_text())["pallet"]
    assert (pallet["num_known_queries"], pallet["num_unknown_queries"]) == (4, 0)
    assert pallet["at_thresholds"]["unknown_false_match_rate"] is None
    # Every block votes and every score clears 0, so each query is matched to some pallet.
    assert pallet["at_thresholds"]["false_reject_rate"] == 0.0
    assert "n/a" in capsys.readouterr().out


def test_calibration_stored_in_the_checkpoint_is_used_by_default(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "model.safetensors"
    shutil.copy(tiny_checkpoint, checkpoint)
    common = ["evaluate", "--data", str(tiny_dataset), "--checkpoint", str(checkpoint), "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "calib"), "--calibrate", "--store-in-checkpoint"]) == 0

    stored = read_metadata(checkpoint).decision
    assert stored is not None and stored == read_decision_parameters(tmp_path / "calib" / "thresholds.json")
    assert stored.model_id == read_metadata(tiny_checkpoint).model_id
    assert (stored.rule.top_k, stored.calibration["gallery_captures_per_pallet"]) == (DEFAULT_TOP_K, 1)

    assert main([*common, "--out", str(tmp_path / "again")]) == 0
    applied = json.loads((tmp_path / "again" / "report.json").read_text())["pallet"]
    assert applied["thresholds_source"] == f"checkpoint {checkpoint}"
    assert applied["thresholds"] == dataclasses.asdict(stored.thresholds)


def test_embedding_cache_grows_by_file(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from models.evaluation.evaluate import embed_captures
    from models.runtime.inference import Embedder
    from models.training.data import read_dataset

    captures = read_dataset(tiny_dataset)
    embedder = Embedder.load(tiny_checkpoint, num_threads=1)
    cache = tmp_path / "embeddings.npz"
    first = embed_captures(embedder, captures[:3], cache=cache)

    with caplog.at_level(logging.INFO, logger="models.evaluation.evaluate"):
        second = embed_captures(embedder, captures[1:5], cache=cache)
    assert any("reusing 2 embeddings" in record.message for record in caplog.records)
    np.testing.assert_array_equal(second[:2], first[1:3])
    fresh = embedder.embed([Image.open(c.path).convert("RGB") for c in captures[3:5]])
    np.testing.assert_allclose(second[2:], fresh, atol=1e-5)
    with np.load(cache) as stored:
        assert sorted(stored["paths"].tolist()) == sorted(str(c.path) for c in captures[:5])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="models.evaluation.evaluate"):
        np.testing.assert_array_equal(embed_captures(embedder, captures[:5], cache=cache)[:3], first)
    assert any("reusing embeddings" in record.message for record in caplog.records)


def test_vocabulary_command_stores_words_that_the_evaluation_then_uses(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_words = tmp_path / "with_words.safetensors"
    learn = ["vocabulary", "--data", str(tiny_dataset), "--checkpoint", str(tiny_checkpoint)]
    sizes = ["--branches", "2", "--leaves", "4", "--iterations", "3", "--workers", "1"]
    assert main([*learn, *sizes, "--output", str(with_words)]) == 0
    vocabulary_id = capsys.readouterr().out.strip()
    assert vocabulary_id.startswith("words8-")
    assert read_metadata(tiny_checkpoint).vocabulary_id == ""  # --output leaves the source untouched
    assert read_metadata(with_words).vocabulary_id == vocabulary_id

    out = tmp_path / "out"
    evaluate = ["evaluate", "--data", str(tiny_dataset), "--checkpoint", str(with_words), "--threads", "1"]
    assert main([*evaluate, "--out", str(out), "--gallery-sizes", "2", "--calibrate"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verified"]["vocabulary_id"] == vocabulary_id

    assert main([*learn, "--branches", "0", "--output", str(tmp_path / "bad.safetensors")]) == 2

    # a retrained network takes the vocabulary over unchanged
    capsys.readouterr()
    copied = tmp_path / "copied.safetensors"
    copy = ["vocabulary", "--copy-from", str(with_words), "--checkpoint", str(tiny_checkpoint)]
    assert main([*copy, "--output", str(copied)]) == 0
    assert capsys.readouterr().out.strip() == vocabulary_id == read_metadata(copied).vocabulary_id
    assert read_metadata(copied).model_id == read_metadata(tiny_checkpoint).model_id
    assert main(["vocabulary", "--copy-from", str(tiny_checkpoint), "--output", str(tmp_path / "y")]) == 2
