"""Detection bench: times decode, detection and crops on rendered side views and reports the target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.detection import DETECTION_MS_TARGET, main, run_detection_bench
from models.runtime.detector import BlockDetector, BlockDetectorNet, DetectorMetadata, save_detector


@pytest.fixture
def tiny_detector(tmp_path: Path) -> Path:
    path = tmp_path / "detector.safetensors"
    metadata = DetectorMetadata(
        input_width=128, input_height=80, neck_channels=8, score_threshold=0.0, max_detections=3
    )
    save_detector(BlockDetectorNet(8), path, metadata)
    return path


def test_bench_times_every_stage(tiny_detector: Path) -> None:
    result = run_detection_bench(BlockDetector.load(tiny_detector), images=2, repeats=1, size=(320, 180))
    assert result["image_size"] == [320, 180] and result["input_size"] == [128, 80]
    for stage in ("decode_ms", "detect_ms", "crop_ms", "decode_plus_detect_ms"):
        assert result[stage]["p50_ms"] > 0
    assert 0.0 <= result["blocks_per_image_mean"] <= 3.0  # an untrained network: at most max_detections
    target = result["targets"]["detection_ms"]
    assert target["target"] == DETECTION_MS_TARGET
    assert target["met"] == (target["value"] <= DETECTION_MS_TARGET)


def test_bench_command_writes_json(
    tiny_detector: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "bench.json"
    assert (
        main(["--detector", str(tiny_detector), "--images", "1", "--repeats", "1", "--output", str(output)])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(output.read_text())
    assert printed["detection"]["image_size"] == [1280, 720]
    assert "cpu" in printed["machine"]
