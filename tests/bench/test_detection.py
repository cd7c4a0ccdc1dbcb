"""Detection bench: times decode, detection and crops on rendered side views and reports the target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.detection import DETECTION_MS_TARGET, main, run_detection_bench
from bench.latency import parse_stage_seconds
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


def test_stage_seconds_are_read_from_the_dispatch_series_of_the_metrics() -> None:
    """The dispatch comparison's stage breakdown reads only dispatches' sums and counts."""
    text = (
        'palletreid_stage_duration_seconds_bucket{kind="dispatch",stage="detect",le="0.1"} 5\n'
        'palletreid_stage_duration_seconds_sum{kind="dispatch",stage="detect"} 0.8\n'
        'palletreid_stage_duration_seconds_count{kind="dispatch",stage="detect"} 6\n'
        'palletreid_stage_duration_seconds_sum{kind="receipt",stage="detect"} 9\n'
        'palletreid_stage_duration_seconds_sum{kind="dispatch",stage="forward"} 0.2\n'
        'palletreid_stage_duration_seconds_count{kind="dispatch",stage="forward"} 2\n'
    )
    assert parse_stage_seconds(text) == {"detect": (0.8, 6.0), "forward": (0.2, 2.0)}
    assert parse_stage_seconds("palletreid_http_requests_total 3\n") == {}
