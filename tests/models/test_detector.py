"""Block detector: targets decode to the truth, a tiny detector learns, runtime order, files, crops, CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from app.cli import main
from models.runtime.checkpoint import DEFAULT_CHECKPOINT
from models.runtime.detector import (
    CROP_SIZE,
    BlockDetector,
    BlockDetectorNet,
    Detection,
    DetectorError,
    DetectorMetadata,
    crop_blocks,
    decode,
    load_detector,
    save_detector,
)
from models.runtime.inference import Embedder
from models.synth import SynthConfig, generate_dataset
from models.synth.sides import SideConfig, generate_sides
from models.training.data import read_dataset
from models.training.detector_annotations import read_annotations
from models.training.detector_data import Augmentation, build_targets, place
from models.training.detector_loop import DetectorTrainConfig, train_detector
from models.training.detector_metrics import DetectionTally, identification_from_sides, match

INPUT = (128, 80)
QUADS = np.array(
    [
        [[70, 30], [100, 32], [99, 50], [71, 48]],  # middle
        [[8, 20], [30, 21], [30, 40], [9, 39]],  # left
        [[105, 35], [125, 36], [124, 52], [104, 51]],  # right
    ],
    np.float64,
)


def _logits(heatmap: Tensor) -> Tensor:
    return torch.logit(heatmap.clamp(1e-4, 1 - 1e-4))


def test_targets_decode_back_to_the_quads() -> None:
    heatmap, corners, weights = build_targets(QUADS, INPUT)
    assert heatmap.shape == (1, 20, 32) and corners.shape == (8, 20, 32)
    assert int((heatmap == 1).sum()) == 3 and float(weights.max()) == 1.0
    (peaks,) = decode(
        _logits(heatmap[None]), corners[None], score_threshold=0.5, nms_iou=0.5, max_detections=8
    )
    found = sorted((quad for _, quad in peaks), key=lambda quad: quad[:, 0].mean())
    truth = sorted(QUADS, key=lambda quad: quad[:, 0].mean())
    assert len(found) == 3
    for quad, expected in zip(found, truth, strict=True):
        np.testing.assert_allclose(quad, expected, atol=1e-3)


class _Oracle(BlockDetectorNet):
    """Returns fixed outputs: the runtime's letterboxing, decoding and ordering are what is tested."""

    def __init__(self, heatmap: Tensor, corners: Tensor) -> None:
        super().__init__(neck_channels=8)
        self.outputs = (heatmap, corners)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        assert images.shape[1:] == (3, INPUT[1], INPUT[0])
        return self.outputs[0].expand(len(images), -1, -1, -1), self.outputs[1].expand(
            len(images), -1, -1, -1
        )


def test_runtime_detect_orders_left_to_right_in_original_pixels() -> None:
    heatmap, corners, _ = build_targets(QUADS, INPUT)
    heatmap = heatmap * 0.9  # peaks of different confidences, best (middle) first
    metadata = DetectorMetadata(input_width=INPUT[0], input_height=INPUT[1], neck_channels=8)
    detector = BlockDetector(_Oracle(_logits(heatmap[None]), corners[None]), metadata)
    image = Image.new("RGB", (INPUT[0] * 4, INPUT[1] * 4))  # 4x the input: boxes come back scaled
    detections = detector.detect(image)
    assert len(detections) == 3
    lefts = [detection.box[0] for detection in detections]
    assert lefts == sorted(lefts)
    assert detections[0].box == pytest.approx((8 * 4, 20 * 4, 30 * 4, 40 * 4), abs=0.05)
    assert all(0.85 < detection.confidence < 0.95 for detection in detections)
    crops = crop_blocks(image, detections)
    assert [crop.size for crop in crops] == [CROP_SIZE] * 3


def test_crops_rectify_the_quad_and_fall_back_to_the_box() -> None:
    image = Image.new("RGB", (200, 120), (0, 0, 0))
    image.paste((250, 250, 250), (50, 30, 150, 90))
    quad = ((50.0, 30.0), (150.0, 30.0), (150.0, 90.0), (50.0, 90.0))
    rectified, degenerate = crop_blocks(
        image,
        [
            Detection((50, 30, 150, 90), 1.0, quad),
            Detection((50, 30, 150, 90), 1.0, (quad[0], quad[2], quad[1], quad[3])),
        ],
        size=(64, 40),
    )
    assert rectified.size == degenerate.size == (64, 40)
    assert np.asarray(rectified)[2:-2, 2:-2].min() > 200  # only the white face
    assert np.asarray(degenerate)[2:-2, 2:-2].min() > 200  # the axis-aligned box of a crossed quad
    (wider,) = crop_blocks(image, [Detection((50, 30, 150, 90), 1.0, quad)], size=(64, 40), margin=0.2)
    assert np.asarray(wider)[0].max() < 50  # the margin shows the surroundings


def test_metrics_match_greedily_and_check_order() -> None:
    truths = [(0.0, 0.0, 10.0, 10.0), (20.0, 0.0, 30.0, 10.0)]
    detections = [Detection((0.5, 0.0, 10.0, 10.0), 0.9, ()), Detection((21.0, 0.0, 33.0, 10.0), 0.8, ())]
    assert [(d, t) for d, t, _ in match(detections, truths, 0.5)] == [(0, 0), (1, 1)]
    tally = DetectionTally()
    tally.add(detections, truths)
    tally.add(detections[:1], truths)
    summary = tally.summary()
    assert summary["recall@0.5"] == 0.75 and summary["precision@0.5"] == 1.0
    assert summary["recall@0.75"] == 0.5
    assert summary["images_exact_and_ordered"] == 0.5


def test_augmented_placement_keeps_quads_on_their_pixels() -> None:
    image = Image.new("RGB", (256, 160))
    image.paste((255, 0, 0), (40, 40, 80, 60))
    quads = np.array([[[40, 40], [80, 40], [80, 60], [40, 60]]], np.float64)
    for seed in range(6):
        pixels, moved = place(
            image,
            quads,
            INPUT,
            np.random.default_rng(seed),
            Augmentation(brightness=0, contrast=0, saturation=0, greyscale=0),
        )
        centre = moved[0].mean(axis=0).round().astype(int)
        assert pixels[centre[1], centre[0], 0] > 200 and pixels[centre[1], centre[0], 1] < 50
        assert moved[0, 0, 0] < moved[0, 1, 0]  # flipped quads keep top-left first


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a busy two-core machine two threads spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_detector_trains_exports_and_loads(tmp_path: Path, one_thread: None) -> None:
    data = tmp_path / "sides"
    generate_sides(data, SideConfig(pallets=2, width=192, height=108), progress=False)
    config = DetectorTrainConfig(
        data_dir=data,
        out=tmp_path / "detector.safetensors",
        work_dir=tmp_path / "run",
        input_width=INPUT[0],
        input_height=INPUT[1],
        neck_channels=16,
        batch_size=4,
        max_steps=30,
        warmup_steps=2,
        lr=3e-3,
        pretrained=False,
        checkpoint_every=8,
    )
    metadata, state = train_detector(config, progress=False)
    losses = [row["loss"] for row in state.history]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:2])
    assert metadata.model_id.startswith("blockdet-mnv2-") and metadata.training["steps"] == 30
    model, loaded = load_detector(config.out)
    assert loaded == metadata
    assert config.out.stat().st_size < 3_000_000
    trained = BlockDetector(model, loaded).detect_batch([Image.new("RGB", (192, 108))] * 2)
    assert len(trained) == 2
    # resuming continues from the saved state
    _, state = train_detector(replace(config, max_steps=32, resume=True), progress=False)
    assert state.step == 32 and len(state.history) == 32
    lines = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_training_on_cuda_without_a_gpu_says_so(tmp_path: Path) -> None:
    data = tmp_path / "sides"
    generate_sides(data, SideConfig(pallets=1, width=192, height=108), progress=False)
    config = DetectorTrainConfig(
        data_dir=data, out=tmp_path / "d.safetensors", work_dir=tmp_path, device="cuda"
    )
    with pytest.raises(ValueError, match="CUDA is not available"):
        train_detector(config, progress=False)
    assert not (tmp_path / "d.safetensors").exists()


def test_detector_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match="does not exist"):
        load_detector(tmp_path / "missing.safetensors")
    with pytest.raises(DetectorError, match="not a palletreid block detector"):
        load_detector(DEFAULT_CHECKPOINT)
    path = tmp_path / "d.safetensors"
    save_detector(BlockDetectorNet(8), path, DetectorMetadata(neck_channels=8))
    model, metadata = load_detector(path)
    assert metadata.neck_channels == 8 and not model.training


def test_cli_help_and_detect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("train-detector", "detect"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
    assert "--evaluate" in capsys.readouterr().out
    detector = tmp_path / "d.safetensors"
    save_detector(
        BlockDetectorNet(8),
        detector,
        DetectorMetadata(
            input_width=128, input_height=80, neck_channels=8, score_threshold=0.0, max_detections=2
        ),
    )
    image = tmp_path / "side.jpg"
    Image.new("RGB", (256, 160), (90, 70, 50)).save(image)
    out = tmp_path / "out"
    sheet = tmp_path / "sheet.png"
    arguments = ["detect", str(image), str(image), "--out", str(out), "--detector", str(detector)]
    assert main([*arguments, "--sheet", str(sheet), "--sheet-width", "100", "--sheet-colours", "16"]) == 0
    assert Image.open(sheet).size == (200, 62)  # two 256x160 images at width 100
    found = json.loads((out / "detections.json").read_text())[str(image)]
    assert len(found) == 2
    assert (out / "side_boxes.png").is_file()
    assert Image.open(out / "side_block0.png").size == (280, 175)
    assert main(["detect", "--out", str(out), "--detector", str(detector)]) == 2


def test_identification_from_sides_reports_rank1_per_family(tmp_path: Path) -> None:
    """Shipped detector and fingerprint model on one pallet of each family: the three block rank-1 figures,
    overall and per family, agree with each other, and true crops find their block."""
    families = ("chipsplat", "flakepress")
    generate_sides(tmp_path / "sides", SideConfig(pallets=1, seed=5, families=families), progress=False)
    generate_dataset(
        tmp_path / "crops",
        SynthConfig(pallets=1, seed=5, cameras=2, frames=1, families=families),
        progress=False,
    )
    report = identification_from_sides(
        BlockDetector.load(num_threads=1),
        Embedder.load(num_threads=1),
        read_annotations(tmp_path / "sides"),
        read_dataset(tmp_path / "crops"),
        progress=False,
    )
    assert report["gallery_blocks"] == report["side_view_blocks"] == 12
    for measure in ("rank1_true_crops", "rank1_side_views_truth_quads", "rank1_side_views_detected"):
        per_family = report["by_family"][measure]
        assert set(per_family) == set(families)
        assert report[measure] == pytest.approx(sum(per_family.values()) / 2)  # six blocks per family
    assert report["rank1_true_crops"] >= 0.5
