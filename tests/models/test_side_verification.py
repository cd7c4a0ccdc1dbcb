"""The geometric stage measured on side views (``models.evaluation.side_views``), with the shipped detector
and decision parameters on rendered pallets of both families."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from models.evaluation.side_views import verification_from_sides
from models.runtime.detector import BlockDetector
from models.runtime.inference import Embedder
from models.runtime.voting import GeometryParameters
from models.synth import SynthConfig, generate_dataset
from models.synth.sides import SideConfig, generate_sides
from models.training.data import read_dataset
from models.training.detector_annotations import read_annotations

FAMILIES = ("chipsplat", "flakepress")
KINDS = (
    "true_crops",
    "side_views_as_blocks",
    "side_views",
    "true_crops_against_side_views_as_blocks",
    "true_crops_against_side_views",
    "side_views_against_side_views",
    "side_views_against_crops_at_side_scale",
    "crops_at_side_scale_against_side_views",
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two pallets of each family: both side views at two stations, and block crops from two cameras (same
    identities)."""
    root = tmp_path_factory.mktemp("side-verification")
    for station, folder in enumerate(("sides", "receipt-sides")):
        config = SideConfig(pallets=2, seed=5, families=FAMILIES, station=station)
        generate_sides(root / folder, config, progress=False)
    generate_dataset(
        root / "crops", SynthConfig(pallets=2, seed=5, cameras=2, frames=1, families=FAMILIES), progress=False
    )
    return root


def test_known_pallets_and_impostors_per_kind_of_query(rendered: Path) -> None:
    decision = Embedder.load(num_threads=1).metadata.decision
    geometry = decision.geometry if decision is not None else GeometryParameters()
    report = verification_from_sides(
        BlockDetector.load(num_threads=1),
        read_annotations(rendered / "sides"),
        read_dataset(rendered / "crops"),
        geometry,
        impostors=2,
        receipt_views=read_annotations(rendered / "receipt-sides"),
        side_scale_width=112,
        progress=False,
    )
    assert (report["pallets"], report["impostors_per_query"]) == (4, 2)
    assert report["receipt_side_views"] is True and report["side_scale_width"] == 112
    assert report["extractors"] == {
        "stored": geometry.extractor.max_features,
        "side_view_queries": geometry.side_view_extractor.max_features,
    }
    for kind in KINDS:
        figures: dict[str, Any] = report[kind]
        assert figures["genuine_inliers"]["n"] == 4 and figures["impostor_inliers"]["n"] == 8
        assert {family: part["pallets"] for family, part in figures["by_family"].items()} == dict.fromkeys(
            FAMILIES, 2
        )
        assert figures["matched"] + figures["review"] <= 1.0
        assert figures["impostors_in_match_band"] == 0, f"{kind}: an impostor reached the match band"
    # Crops of a block camera are the easy case: every known pallet lies far inside the match band.
    crops = report["true_crops"]
    assert crops["matched"] == 1.0
    assert crops["genuine_inliers"]["min"] > 2 * crops["impostor_inliers"]["max"]
    # A pallet received and dispatched from side views at two stations is matched on its own blocks.
    stations = report["side_views_against_side_views"]
    assert stations["matched"] == 1.0
    assert stations["genuine_inliers"]["min"] > stations["impostor_inliers"]["max"]
    # The side-view extractor finds more shared corners than block images' extractor does, both ways.
    for kind in ("side_views", "true_crops_against_side_views"):
        side, as_blocks = report[kind], report[f"{kind}_as_blocks"]
        assert side["genuine_inliers"]["median"] > as_blocks["genuine_inliers"]["median"], kind
    # Block images brought to a side-view block's scale share more corners with side-view blocks, both ways.
    for at_side_scale, plain in (
        ("side_views_against_crops_at_side_scale", "side_views"),
        ("crops_at_side_scale_against_side_views", "true_crops_against_side_views"),
    ):
        assert (
            report[at_side_scale]["genuine_inliers"]["median"] > report[plain]["genuine_inliers"]["median"]
        ), at_side_scale


def test_the_cli_adds_the_geometric_figures_to_the_report(rendered: Path, tmp_path: Path) -> None:
    arguments = ["detect", "--evaluate", str(rendered / "sides"), "--identify", str(rendered / "crops")]
    receipts = ["--receipt-sides", str(rendered / "receipt-sides")]
    variants = [*receipts, "--side-scale-width", "112"]
    assert (
        main([*arguments, *variants, "--out", str(tmp_path / "a"), "--impostors", "1", "--threads", "1"]) == 0
    )
    report = json.loads((tmp_path / "a" / "detection_report.json").read_text())
    assert report["verification"]["impostors_per_query"] == 1
    assert set(KINDS) <= set(report["verification"])
    assert main([*arguments, "--out", str(tmp_path / "b"), "--impostors", "0", "--threads", "1"]) == 0
    assert "verification" not in json.loads((tmp_path / "b" / "detection_report.json").read_text())
    assert main([*arguments, "--out", str(tmp_path / "c"), "--impostors", "-1"]) == 2
    assert main([*arguments, *receipts, "--out", str(tmp_path / "d"), "--impostors", "0"]) == 2
    assert main([*arguments, "--out", str(tmp_path / "e"), "--side-scale-width", "-1"]) == 2
