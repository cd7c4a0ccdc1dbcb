"""Local features of a block image and their geometric check: ORB keypoints, inliers under one homography.

The network's cosine similarities drift with the capture source; the number of local matches that agree on one
plane-to-plane transform does far less (measured on an independent source, issue 10). A block face is flat,
so two captures of the same block are related by a homography, and matches between different blocks do not
line up.

Extraction works at a fixed working size (long side :attr:`ExtractorSettings.working_long_side`), so the same
block uploaded at another resolution gives the same features, and the RANSAC tolerance in pixels means the
same thing for every capture. CLAHE evens out exposure and light gradients before detection. ORB detects
``oversampling`` times more corners than it keeps, with a low FAST threshold, and keeps the strongest: on
the project's captures this lifts same-block inliers of aged, low-texture blocks and lowers the impostor tail
(wood-texture corners win over the ink strokes and nail heads that every pallet shares).

Features are stored with the capture (bytea, :meth:`LocalFeatures.to_bytes`), so a query is verified against
stored features and the gallery is never re-extracted.

Thread safety: OpenCV detector objects are not shared between threads (one per thread); matching uses only
stateless OpenCV functions. OpenCV's own thread pool is left as the process configured it.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

DESCRIPTOR_BYTES = 32
"""ORB descriptors are 256-bit strings."""

FORMAT_MAGIC = b"PLF"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<3sBHHH")  # magic, version, working width, working height, keypoint count
_POINT_SCALE = 32.0
"""Keypoints are stored as uint16 in 1/32 px: exact enough for a 6 px tolerance, 4 bytes a point."""
MAX_WORKING_SIDE = int(np.iinfo(np.uint16).max // _POINT_SCALE)


@dataclass(frozen=True, slots=True)
class ExtractorSettings:
    """How features are extracted; stored and query features must come from the same settings."""

    working_long_side: int = 320
    max_features: int = 500
    oversampling: int = 3
    """Corners detected per kept corner; the strongest ``max_features`` are kept."""
    fast_threshold: int = 5
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8

    def __post_init__(self) -> None:
        if not 32 <= self.working_long_side <= MAX_WORKING_SIDE:
            raise ValueError(f"working_long_side must lie in [32, {MAX_WORKING_SIDE}]")
        if self.max_features < 1 or self.oversampling < 1:
            raise ValueError("max_features and oversampling must be at least 1")
        if not 1 <= self.fast_threshold <= 255:
            raise ValueError("fast_threshold must lie in [1, 255]")
        if self.clahe_clip_limit < 0 or self.clahe_tile_grid < 1:
            raise ValueError("clahe_clip_limit must be >= 0 and clahe_tile_grid >= 1")


@dataclass(frozen=True, slots=True)
class MatcherSettings:
    """How two feature sets are matched and verified."""

    ratio: float = 0.8
    """Lowe's ratio test on Hamming distances: nearest < ratio x second nearest."""
    ransac_threshold_px: float = 6.0
    """Reprojection tolerance in working-size pixels."""
    min_matches: int = 8
    """Fewer ratio-test matches than this count as 0 inliers (a homography needs 4; 8 keeps noise out)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError("ratio must lie in (0, 1]")
        if self.ransac_threshold_px <= 0:
            raise ValueError("ransac_threshold_px must be positive")
        if self.min_matches < 4:
            raise ValueError("min_matches must be at least 4 (a homography needs 4 points)")


DEFAULT_EXTRACTOR = ExtractorSettings()
DEFAULT_MATCHER = MatcherSettings()


class LocalFeaturesFormatError(ValueError):
    """Stored bytes are not local features this code can read."""


@dataclass(frozen=True, slots=True, eq=False)
class LocalFeatures:
    """Keypoints (x, y in working-size pixels, float32 (n, 2)) and their ORB descriptors (uint8 (n, 32))."""

    points: npt.NDArray[np.float32]
    descriptors: npt.NDArray[np.uint8]
    working_size: tuple[int, int]
    """(width, height) of the working image the points refer to."""

    def __post_init__(self) -> None:
        if self.points.dtype != np.float32 or self.points.ndim != 2 or self.points.shape[1] != 2:
            raise ValueError(f"points must be float32 (n, 2), got {self.points.dtype} {self.points.shape}")
        if self.descriptors.dtype != np.uint8 or self.descriptors.shape != (
            len(self.points),
            DESCRIPTOR_BYTES,
        ):
            raise ValueError(
                f"descriptors must be uint8 ({len(self.points)}, {DESCRIPTOR_BYTES}), "
                f"got {self.descriptors.dtype} {self.descriptors.shape}"
            )
        width, height = self.working_size
        if not (1 <= width <= MAX_WORKING_SIDE and 1 <= height <= MAX_WORKING_SIDE):
            raise ValueError(f"working size {self.working_size} out of range")
        if len(self.points) and (
            self.points.min() < 0 or self.points[:, 0].max() > width or self.points[:, 1].max() > height
        ):
            raise ValueError("points lie outside the working image")

    def __len__(self) -> int:
        return len(self.points)

    def to_bytes(self) -> bytes:
        """Storage form: a 10-byte header, then 4 bytes of position and 32 of descriptor a keypoint."""
        width, height = self.working_size
        quantised = np.rint(self.points * _POINT_SCALE).astype("<u2")
        return b"".join(
            (
                _HEADER.pack(FORMAT_MAGIC, FORMAT_VERSION, width, height, len(self.points)),
                quantised.tobytes(),
                np.ascontiguousarray(self.descriptors).tobytes(),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LocalFeatures:
        """Parse :meth:`to_bytes`' output; :class:`LocalFeaturesFormatError` says what is wrong."""
        if len(data) < _HEADER.size:
            raise LocalFeaturesFormatError(f"{len(data)} bytes is shorter than the header")
        magic, version, width, height, count = _HEADER.unpack_from(data)
        if magic != FORMAT_MAGIC:
            raise LocalFeaturesFormatError("not local features (wrong magic)")
        if version != FORMAT_VERSION:
            raise LocalFeaturesFormatError(f"local features format {version} is not supported")
        expected = _HEADER.size + count * (4 + DESCRIPTOR_BYTES)
        if len(data) != expected:
            raise LocalFeaturesFormatError(f"{count} keypoints need {expected} bytes, got {len(data)}")
        start = _HEADER.size
        points = np.frombuffer(data, dtype="<u2", count=2 * count, offset=start).reshape(count, 2)
        descriptors = np.frombuffer(data, dtype=np.uint8, offset=start + 4 * count).reshape(
            count, DESCRIPTOR_BYTES
        )
        try:
            return cls(
                points=(points.astype(np.float32) / _POINT_SCALE),
                descriptors=descriptors.copy(),
                working_size=(width, height),
            )
        except ValueError as error:
            raise LocalFeaturesFormatError(str(error)) from error


class _Detectors(threading.local):
    """One ORB detector and CLAHE per thread and settings: OpenCV algorithm objects are not thread-safe."""

    def __init__(self) -> None:
        self.by_settings: dict[ExtractorSettings, tuple[cv2.ORB, cv2.CLAHE]] = {}

    def get(self, settings: ExtractorSettings) -> tuple[cv2.ORB, cv2.CLAHE]:
        detectors = self.by_settings.get(settings)
        if detectors is None:
            orb = cv2.ORB.create(
                nfeatures=settings.max_features * settings.oversampling,
                fastThreshold=settings.fast_threshold,
            )
            grid = (settings.clahe_tile_grid, settings.clahe_tile_grid)
            clahe = cv2.createCLAHE(clipLimit=settings.clahe_clip_limit, tileGridSize=grid)
            detectors = self.by_settings[settings] = (orb, clahe)
        return detectors


_detectors = _Detectors()


def working_image(image: Image.Image | npt.NDArray[np.uint8], settings: ExtractorSettings) -> np.ndarray:
    """The grayscale image features are detected on: long side scaled to the working size, CLAHE applied."""
    gray = _grayscale(image)
    height, width = gray.shape
    if min(height, width) < 2:
        raise ValueError(f"image of {width}x{height} pixels is too small for local features")
    scale = settings.working_long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != (width, height):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        gray = cv2.resize(gray, size, interpolation=interpolation)
    _, clahe = _detectors.get(settings)
    return clahe.apply(gray) if settings.clahe_clip_limit > 0 else gray


def extract(
    image: Image.Image | npt.NDArray[np.uint8], settings: ExtractorSettings = DEFAULT_EXTRACTOR
) -> LocalFeatures:
    """ORB features of one block image (PIL image, or uint8 array: grayscale (h, w) or RGB (h, w, 3))."""
    gray = working_image(image, settings)
    orb, _ = _detectors.get(settings)
    keypoints, descriptors = orb.detectAndCompute(gray, None)
    height, width = gray.shape
    if descriptors is None or not keypoints:
        return LocalFeatures(
            points=np.zeros((0, 2), np.float32),
            descriptors=np.zeros((0, DESCRIPTOR_BYTES), np.uint8),
            working_size=(width, height),
        )
    points = np.array([keypoint.pt for keypoint in keypoints], dtype=np.float32)
    if len(keypoints) > settings.max_features:
        responses = np.array([keypoint.response for keypoint in keypoints], dtype=np.float32)
        # stable sort: equal responses keep detection order, so extraction is deterministic
        strongest = np.argsort(-responses, kind="stable")[: settings.max_features]
        points, descriptors = points[strongest], descriptors[strongest]
    return LocalFeatures(
        points=np.ascontiguousarray(points),
        descriptors=np.ascontiguousarray(descriptors),
        working_size=(width, height),
    )


def at_side_view_scale(image: Image.Image, face_width: int) -> Image.Image:
    """``image`` with only the detail a side-view block face ``face_width`` pixels wide keeps: shrunk (box
    filter, aspect kept) and enlarged back (bilinear, as blocks cut out of side views are) to its own size.

    Corners found at one scale in both captures match more often than a sharp block image's against an
    upsampled side-view block's (``GeometryParameters.side_scale_width``).
    """
    if face_width < 1:
        raise ValueError("face_width must be at least 1")
    if face_width >= image.width:
        return image
    height = max(1, round(face_width * image.height / image.width))
    small = image.resize((face_width, height), Image.Resampling.BOX)
    return small.resize(image.size, Image.Resampling.BILINEAR)


def ratio_matches(
    query: LocalFeatures, stored: LocalFeatures, ratio: float = DEFAULT_MATCHER.ratio
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Point pairs (query points, stored points) whose descriptors pass the ratio test, one per stored point.

    When several query keypoints pick the same stored keypoint only the closest one is kept: one stored
    corner cannot confirm two query corners, which keeps repeated structures from inflating the count.
    """
    if len(query) < 1 or len(stored) < 2:
        empty = np.zeros((0, 2), np.float32)
        return empty, empty
    distances, indices = cv2.batchDistance(
        query.descriptors, stored.descriptors, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2
    )
    passed = np.flatnonzero(distances[:, 0] < ratio * distances[:, 1])
    nearest = indices[passed, 0]
    order = np.lexsort((distances[passed, 0], nearest))
    first_of_each = np.ones(len(order), dtype=bool)
    first_of_each[1:] = nearest[order][1:] != nearest[order][:-1]
    kept = order[first_of_each]
    return query.points[passed[kept]], stored.points[nearest[kept]]


def count_inliers(
    query: LocalFeatures, stored: LocalFeatures, settings: MatcherSettings = DEFAULT_MATCHER
) -> int:
    """Ratio-test matches consistent with one homography (RANSAC), 0 when fewer than ``min_matches`` match."""
    source, target = ratio_matches(query, stored, settings.ratio)
    if len(source) < settings.min_matches:
        return 0
    # USAC (RANSAC with SPRT and local optimisation) gives RANSAC's counts here and stops early on
    # hopeless pairs, which are most pairs an impostor check sees; its sampler is seeded, so it is repeatable.
    _, mask = cv2.findHomography(source, target, cv2.USAC_DEFAULT, settings.ransac_threshold_px)
    return 0 if mask is None else int(np.count_nonzero(mask))


def _grayscale(image: Image.Image | npt.NDArray[np.uint8]) -> np.ndarray:
    # PIL images take the same RGB-to-gray conversion as arrays, so both give the same pixels
    if isinstance(image, Image.Image):
        image = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        return np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"expected a grayscale (h, w) or RGB (h, w, 3) array, got shape {array.shape}")
