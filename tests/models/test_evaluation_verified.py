"""The banded rule evaluated end to end: counting per gallery size, feature cache, report and command."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main
from models.evaluation.evaluate import evaluate_checkpoint
from models.evaluation.features import FEATURES_CACHE, FeatureStore
from models.evaluation.verified import (
    QueryOutcome,
    distribution,
    effective_gallery_sizes,
    gallery_size_figures,
)
from models.runtime.images import load_image_file
from models.runtime.local_features import ExtractorSettings, extract
from models.runtime.voting import GeometryParameters, Outcome

KNOWN = ("P0", "P1", "P2")
COPY_OF_P0 = "X0"
"""An "unknown" pallet whose captures are byte copies of P0's: the rule must match it to P0."""
STRANGER = "X1"


def _write_pallet(
    root: Path, pallet: str, textures: list[np.ndarray], rng: np.random.Generator
) -> list[dict]:
    rows = []
    for block, texture in enumerate(textures):
        for camera in (1, 2):
            image = np.clip(texture + rng.normal(0, 6, texture.shape), 0, 255).astype(np.uint8)
            relative = f"images/{pallet}/b{block}_cam_{camera}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / relative)
            rows.append(
                {
                    "pallet_id": pallet,
                    "path": relative,
                    "camera": f"cam_{camera}",
                    "frame": "0",
                    "block": block,
                }
            )
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three known pallets, a copy of P0 and a stranger (both unknown): six random-texture blocks each."""
    root = tmp_path_factory.mktemp("verified-data")
    rng = np.random.default_rng(5)
    rows: list[dict[str, object]] = []
    for pallet in (*KNOWN, STRANGER):
        textures = [rng.integers(0, 255, (40, 64, 3)).astype(np.float64) for _ in range(6)]
        rows += _write_pallet(root, pallet, textures, rng)
    for row in [r for r in rows if r["pallet_id"] == "P0"]:
        relative = str(row["path"]).replace("images/P0/", f"images/{COPY_OF_P0}/")
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / str(row["path"]), root / relative)
        rows.append({**row, "pallet_id": COPY_OF_P0, "path": relative})
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["pallet_id", "path", "camera", "frame", "block"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _value(figure: float | int | None) -> float:
    assert figure is not None
    return float(figure)


def test_a_copy_of_a_known_pallet_is_matched_and_a_stranger_is_not(
    tiny_checkpoint: Path, dataset: Path, tmp_path: Path
) -> None:
    report = evaluate_checkpoint(
        tiny_checkpoint,
        dataset,
        out_dir=tmp_path,
        unknown_fraction=0.4,
        gallery_sizes=(1, 2, 10),
        workers=2,
        num_threads=1,
    )

    verified = report.verified
    assert verified is not None
    assert [size.gallery_pallets for size in verified.gallery_sizes] == [1, 2, 3]
    assert verified.geometry == dataclasses.asdict(GeometryParameters())
    for size in verified.gallery_sizes:
        # P0 is the first known pallet, so it is in every gallery, and its copy is matched to it every time.
        assert (size.known_queries, size.unknown_queries) == (size.gallery_pallets, 2)
        assert size.known_identified == size.known_queries
        assert size.known_wrong_match == size.known_review == size.known_new == 0
        assert (size.unknown_matched, size.unknown_review, size.unknown_new) == (1, 0, 1)
        assert size.rates["unknown_matched"] == 0.5 and size.rates["known_identified"] == 1.0
        assert size.true_pallet_checked == size.known_queries
        inliers = size.inliers
        assert inliers["genuine"]["n"] == size.known_queries
        # The copy's evidence is genuine-strength: its best "impostor" (P0) is the unknown queries' maximum.
        assert _value(inliers["unknown_best"]["max"]) >= GeometryParameters().match_inliers
        assert _value(inliers["genuine"]["min"]) >= GeometryParameters().match_inliers
    largest = verified.gallery_sizes[-1]
    # Blocks of different pallets hardly agree on a homography: most impostor pairs stay below the block
    # threshold (the exception are the copy's pairs with P0, "impostors" by label only).
    assert _value(largest.inliers["impostor_block"]["p1"]) < GeometryParameters().block_inliers
    # Extracted once: every query block and the receipts of the checked candidates; cached for the rerun.
    assert verified.features_extracted > 0 and verified.features_from_cache == 0
    assert (tmp_path / FEATURES_CACHE).is_file()
    assert "inlier_hist.png" in report.plots

    again = evaluate_checkpoint(
        tiny_checkpoint, dataset, out_dir=tmp_path, unknown_fraction=0.4, gallery_sizes=(1, 2, 10), workers=1
    )
    assert again.verified is not None
    assert again.verified.features_extracted == 0
    assert again.verified.features_from_cache == verified.features_extracted
    assert again.verified.gallery_sizes == verified.gallery_sizes


def test_stricter_bands_send_uncertain_queries_to_review(
    tiny_checkpoint: Path, dataset: Path, tmp_path: Path
) -> None:
    genuine = GeometryParameters()
    # Matching now needs more inliers than any pair gives, review what genuine pairs give: every known
    # pallet and the copy are flagged for review (with the true pallet among the candidates), none matched.
    strict = GeometryParameters(match_inliers=1_000_000, review_inliers=genuine.match_inliers)
    report = evaluate_checkpoint(
        tiny_checkpoint,
        dataset,
        out_dir=tmp_path,
        unknown_fraction=0.4,
        gallery_sizes=(3,),
        geometry=strict,
        geometry_source="test",
    )
    assert report.verified is not None
    (size,) = report.verified.gallery_sizes
    assert size.known_identified == 0 and size.known_review == size.known_review_with_true_candidate == 3
    assert (size.unknown_matched, size.unknown_review, size.unknown_new) == (0, 1, 1)
    assert report.verified.geometry_source == "test"
    assert report.verified.geometry["match_inliers"] == 1_000_000


def _outcome(pallet: str, known: bool, outcome: Outcome, **fields: object) -> QueryOutcome:
    values: dict[str, object] = {
        "decided": None,
        "review_candidates": (),
        "network_decided": None,
        "true_shortlisted": known,
        "true_checked": known,
        "genuine_inliers": None,
        "genuine_block_inliers": (),
        "impostor_inliers": None,
        "impostor_block_inliers": (),
        "impostor_confirmed_blocks": None,
        "runner_up_inliers": None,
        "candidates_checked": 1,
    }
    values.update(fields)
    return QueryOutcome(pallet=pallet, known=known, outcome=outcome, **values)  # type: ignore[arg-type]


def test_counts_split_known_and_unknown_queries_by_band() -> None:
    outcomes = [
        _outcome("A", True, Outcome.MATCHED, decided="A", network_decided="A", genuine_inliers=200),
        _outcome("B", True, Outcome.MATCHED, decided="C", network_decided="C", genuine_inliers=90),
        _outcome("C", True, Outcome.REVIEW, review_candidates=("C", "A"), genuine_inliers=100),
        _outcome("D", True, Outcome.REVIEW, review_candidates=("A",), true_checked=False),
        _outcome("E", True, Outcome.NEW, true_shortlisted=False, true_checked=False),
        _outcome(
            "U1",
            False,
            Outcome.MATCHED,
            decided="A",
            network_decided="A",
            impostor_inliers=140,
            impostor_confirmed_blocks=3,
            runner_up_inliers=60,
        ),
        _outcome(
            "U2", False, Outcome.REVIEW, impostor_inliers=90, impostor_confirmed_blocks=1, network_decided="B"
        ),
        _outcome(
            "U5",
            False,
            Outcome.REVIEW,
            impostor_inliers=120,
            impostor_confirmed_blocks=2,
            runner_up_inliers=80,
        ),
        _outcome("U3", False, Outcome.NEW, impostor_inliers=10),
        _outcome("U4", False, Outcome.NEW),
    ]

    figures = gallery_size_figures(5, outcomes, GeometryParameters())

    assert (figures.known_queries, figures.unknown_queries) == (5, 5)
    assert (figures.known_identified, figures.known_wrong_match, figures.known_review, figures.known_new) == (
        1,
        1,
        2,
        1,
    )
    assert figures.known_review_with_true_candidate == 1
    assert (figures.unknown_matched, figures.unknown_review, figures.unknown_new) == (1, 2, 2)
    assert (figures.network_known_identified, figures.network_known_wrong_match) == (1, 1)
    assert figures.network_known_new == 3 and figures.network_unknown_matched == 2
    assert (figures.true_pallet_shortlisted, figures.true_pallet_checked) == (4, 3)
    assert figures.rates["known_review"] == pytest.approx(0.4)
    assert figures.rates["unknown_new"] == pytest.approx(0.4)
    assert figures.inliers["genuine"]["n"] == 3 and figures.inliers["genuine"]["min"] == 90
    assert figures.inliers["unknown_best"]["max"] == 140 and figures.inliers["unknown_best"]["n"] == 4
    # Review band from 80, match band from 130 with 2 blocks and a margin of 50: U1 met every condition,
    # U2 the margin (no runner-up) but one block, U5 the blocks but not the margin (120 - 80).
    assert figures.unknown_band_conditions == {
        "reached_review_sum": 3,
        "with_match_blocks": 2,
        "with_margin": 2,
        "with_match_blocks_and_margin": 1,
        "reached_match_sum": 1,
    }


def test_distribution_and_gallery_sizes() -> None:
    assert distribution([]) == {
        "n": 0,
        "min": None,
        "p1": None,
        "p5": None,
        "median": None,
        "p99": None,
        "p99_9": None,
        "max": None,
    }
    summary = distribution(list(range(101)))
    assert (summary["n"], summary["min"], summary["median"], summary["max"]) == (101, 0, 50.0, 100)
    assert summary["p1"] == 1.0 and summary["p99_9"] == pytest.approx(99.9)
    assert effective_gallery_sizes((1, 10, 100, 1000), 50) == [1, 10, 50]
    with pytest.raises(ValueError):
        effective_gallery_sizes((0, 10), 50)


def test_feature_store_extracts_through_the_image_loader_and_caches(dataset: Path, tmp_path: Path) -> None:
    settings = ExtractorSettings(max_features=200)
    images = sorted((dataset / "images" / "P1").glob("*.png"))[:3]
    cache = tmp_path / FEATURES_CACHE
    store = FeatureStore(settings, cache)
    first = store.get_all(images)
    assert store.extracted == 3 and store.loaded == 0
    expected = extract(load_image_file(images[0]), settings)
    np.testing.assert_array_equal(first[0].descriptors, expected.descriptors)
    store.save()

    reread = FeatureStore(settings, cache)
    assert reread.loaded == 3
    again = reread.get_all(images)
    assert reread.extracted == 0
    for stored, fresh in zip(again, first, strict=True):
        np.testing.assert_array_equal(stored.descriptors, fresh.descriptors)
        np.testing.assert_allclose(stored.points, fresh.points, atol=1 / 32)

    other = FeatureStore(ExtractorSettings(max_features=100), cache)
    assert other.loaded == 0
    assert len(other.get(images[0])) <= 100


def test_evaluate_command_reports_the_verified_rule_and_network_only(
    tiny_checkpoint: Path, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    arguments = ["evaluate", "--data", str(dataset), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    arguments += ["--unknown-fraction", "0.4", "--calibrate", "--gallery-sizes", "1,3", "--workers", "2"]
    arguments += ["--cache", str(cache), "--threads", "1"]

    assert main(arguments) == 0

    report = json.loads((out / "report.json").read_text())
    verified = report["verified"]
    assert [size["gallery_pallets"] for size in verified["gallery_sizes"]] == [1, 3]
    assert verified["geometry_source"] == "defaults"
    assert verified["network_thresholds"] == report["pallet"]["thresholds"]
    for size in verified["gallery_sizes"]:
        assert set(size["inliers"]) == {
            "genuine",
            "genuine_block",
            "impostor",
            "impostor_block",
            "runner_up",
            "unknown_best",
        }
        assert size["unknown_matched"] == 1
        conditions = size["unknown_band_conditions"]
        assert conditions["reached_match_sum"] <= conditions["reached_review_sum"]
        assert conditions["with_match_blocks_and_margin"] <= min(
            conditions["with_match_blocks"], conditions["with_margin"]
        )
    assert (cache / "embeddings.npz").is_file() and (cache / FEATURES_CACHE).is_file()
    assert not (out / "embeddings.npz").exists()
    stored = json.loads((out / "thresholds.json").read_text())
    assert stored["geometry"]["match_inliers"] == GeometryParameters().match_inliers
    assert stored["calibration"]["geometry_figures"]["gallery_pallets"] == 3
    printed = capsys.readouterr().out
    assert "verified rule" in printed and "network only" in printed
    assert "reached the review sum" in printed and "gallery 3: " in printed

    network_only = tmp_path / "network-only"
    arguments = ["evaluate", "--data", str(dataset), "--checkpoint", str(tiny_checkpoint)]
    arguments += ["--out", str(network_only), "--unknown-fraction", "0.4", "--network-only"]
    arguments += ["--thresholds-from", str(out / "thresholds.json"), "--cache", str(cache)]
    assert main(arguments) == 0
    assert json.loads((network_only / "report.json").read_text())["verified"] is None
