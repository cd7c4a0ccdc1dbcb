"""Local features: extraction on rendered blocks, storage format, ratio matching, geometric verification."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from PIL import Image

from models.runtime.local_features import (
    DESCRIPTOR_BYTES,
    ExtractorSettings,
    LocalFeatures,
    LocalFeaturesFormatError,
    MatcherSettings,
    count_inliers,
    extract,
    ratio_matches,
)
from models.synth import SynthConfig, render_pallet


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, int, str], Image.Image]:
    """Two synthetic pallets, six blocks each, seen by two cameras: (pallet, block, camera) -> image."""
    config = SynthConfig(pallets=2, cameras=2, frames=1, seed=3)
    return {
        (capture.pallet_id, capture.block, capture.camera): Image.open(io.BytesIO(capture.jpeg)).convert(
            "RGB"
        )
        for index in range(2)
        for capture in render_pallet(config, index)
    }


def _texture(seed: int, size: tuple[int, int] = (175, 280)) -> np.ndarray:
    """A random blotchy grayscale texture, rich in corners."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(size[0] // 4, size[1] // 4)).astype(np.float32)
    smooth = cv2.resize(noise, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(128 + 60 * smooth, 0, 255).astype(np.uint8)


def test_same_block_seen_by_two_cameras_has_many_inliers_and_different_blocks_few(
    rendered: dict[tuple[str, int, str], Image.Image],
) -> None:
    features = {key: extract(image) for key, image in rendered.items()}
    pallets = sorted({pallet for pallet, _, _ in features})
    same = [
        count_inliers(features[(p, b, "cam_2")], features[(p, b, "cam_1")]) for p in pallets for b in range(6)
    ]
    different = [
        count_inliers(features[(pallets[0], b, "cam_2")], features[(pallets[1], c, "cam_1")])
        for b in range(6)
        for c in range(6)
    ]
    # measured on these renders: genuine 63..141 (median 85), impostors at most 6
    assert np.median(same) >= 40
    assert max(different) < 25
    assert np.median(same) > 3 * max(different)


def test_a_known_homography_and_exposure_change_are_recovered() -> None:
    texture = _texture(0)
    homography = np.array([[0.95, 0.06, 8.0], [-0.04, 1.02, -5.0], [2e-5, -1e-5, 1.0]])
    warped = cv2.warpPerspective(texture, homography, (texture.shape[1], texture.shape[0]))
    darker = np.clip(warped.astype(np.float32) * 0.6 + 10, 0, 255).astype(np.uint8)
    genuine = count_inliers(extract(darker), extract(texture))
    impostor = count_inliers(extract(_texture(1)), extract(texture))
    assert genuine >= 80
    assert impostor < 20


def test_features_do_not_depend_on_upload_resolution(
    rendered: dict[tuple[str, int, str], Image.Image],
) -> None:
    image = next(iter(rendered.values()))
    small, large = (
        extract(image),
        extract(image.resize((image.width * 3, image.height * 3), Image.Resampling.BICUBIC)),
    )
    assert small.working_size == large.working_size
    assert max(small.working_size) == ExtractorSettings().working_long_side
    # the same corners, up to interpolation: nearly every keypoint survives a homography check
    assert count_inliers(large, small) >= 0.5 * len(small)


def test_extraction_is_deterministic_and_thread_safe(
    rendered: dict[tuple[str, int, str], Image.Image],
) -> None:
    images = list(rendered.values())[:8]
    sequential = [extract(image) for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(extract, images * 3))
    for index, features in enumerate(parallel):
        expected = sequential[index % len(images)]
        np.testing.assert_array_equal(features.points, expected.points)
        np.testing.assert_array_equal(features.descriptors, expected.descriptors)
    pairs = [(sequential[0], sequential[1]), (sequential[2], sequential[2])] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        counts = list(pool.map(lambda pair: count_inliers(*pair), pairs))
    assert counts == [count_inliers(*pair) for pair in pairs]


def test_extraction_keeps_at_most_max_features_and_accepts_arrays_and_pil_alike() -> None:
    texture = _texture(2)
    settings = ExtractorSettings(max_features=100)
    from_array = extract(texture, settings)
    from_pil = extract(Image.fromarray(texture).convert("RGB"), settings)
    assert len(from_array) == 100
    np.testing.assert_array_equal(from_array.descriptors, from_pil.descriptors)


def test_a_blank_image_has_no_features_and_matches_nothing() -> None:
    blank = extract(np.full((175, 280), 90, np.uint8))
    assert len(blank) == 0
    assert count_inliers(blank, extract(_texture(3))) == 0
    assert count_inliers(extract(_texture(3)), blank) == 0
    assert LocalFeatures.from_bytes(blank.to_bytes()).working_size == blank.working_size


def test_storage_round_trip_is_compact_and_exact_enough() -> None:
    features = extract(_texture(4))
    data = features.to_bytes()
    assert len(data) == 10 + len(features) * (4 + DESCRIPTOR_BYTES)
    restored = LocalFeatures.from_bytes(data)
    np.testing.assert_array_equal(restored.descriptors, features.descriptors)
    np.testing.assert_allclose(restored.points, features.points, atol=1 / 64)
    assert restored.working_size == features.working_size
    assert count_inliers(restored, features) == count_inliers(features, features)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda data: data[:5], "shorter than the header"),
        (lambda data: b"XYZ" + data[3:], "wrong magic"),
        (lambda data: data[:3] + bytes([9]) + data[4:], "format 9"),
        (lambda data: data[:-1], "bytes, got"),
    ],
)
def test_corrupt_storage_is_refused(corrupt: Callable[[bytes], bytes], message: str) -> None:
    data = extract(_texture(5)).to_bytes()
    with pytest.raises(LocalFeaturesFormatError, match=message):
        LocalFeatures.from_bytes(corrupt(data))


def test_points_outside_the_working_image_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        LocalFeatures(
            points=np.array([[300.0, 10.0]], np.float32),
            descriptors=np.zeros((1, DESCRIPTOR_BYTES), np.uint8),
            working_size=(280, 175),
        )


def _features(descriptor_bits: list[list[int]], points: list[tuple[float, float]]) -> LocalFeatures:
    """Hand-made features: each descriptor sets the listed bit positions of a 256-bit string."""
    descriptors = np.zeros((len(descriptor_bits), DESCRIPTOR_BYTES), np.uint8)
    for row, bits in enumerate(descriptor_bits):
        for bit in bits:
            descriptors[row, bit // 8] |= 1 << (bit % 8)
    return LocalFeatures(np.array(points, np.float32), descriptors, working_size=(100, 100))


def test_ratio_test_and_one_query_point_per_stored_point() -> None:
    # stored: s0 = bits 0..39, s1 = bits 100..139, s2 = bits 200..239 (pairwise 80 bits apart)
    stored = _features(
        [list(range(40)), list(range(100, 140)), list(range(200, 240))], [(10, 10), (20, 20), (30, 30)]
    )
    query = _features(
        [
            list(range(40)),  # q0 = s0 exactly: distance 0 vs 80, passes
            list(range(2, 40)),  # q1: 2 bits from s0, also picks s0; q0 is closer, so q1 is dropped
            list(range(20)) + list(range(100, 120)),  # q2: 40 from s0 and s1 alike, fails the ratio test
            list(range(100, 130)),  # q3: 10 from s1 vs 70+, passes
        ],
        [(1, 1), (2, 2), (3, 3), (4, 4)],
    )
    source, target = ratio_matches(query, stored, ratio=0.8)
    pairs = sorted(zip(map(tuple, source.tolist()), map(tuple, target.tolist()), strict=True))
    assert pairs == [((1.0, 1.0), (10.0, 10.0)), ((4.0, 4.0), (20.0, 20.0))]


def test_too_few_matches_count_zero() -> None:
    features = extract(_texture(6), ExtractorSettings(max_features=6))
    assert len(features) == 6
    assert count_inliers(features, features, MatcherSettings(min_matches=8)) == 0
    assert count_inliers(features, features, MatcherSettings(min_matches=4)) == 6


@pytest.mark.parametrize(
    "make",
    [
        lambda: ExtractorSettings(working_long_side=10),
        lambda: ExtractorSettings(max_features=0),
        lambda: ExtractorSettings(fast_threshold=0),
        lambda: MatcherSettings(ratio=0.0),
        lambda: MatcherSettings(ransac_threshold_px=0),
        lambda: MatcherSettings(min_matches=3),
    ],
)
def test_invalid_settings_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_images_of_other_types_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        extract(np.zeros((50, 50), np.float32))
    with pytest.raises(ValueError, match="shape"):
        extract(np.zeros((50, 50, 4), np.uint8))
