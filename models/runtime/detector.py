"""Block detection in side views: a centre-point detector on a MobileNetV2 trunk, and perspective crops.

The network (``BlockDetectorNet``) sees a letterboxed image (default 512x288 for 16:9 side views) and
predicts, on a grid of stride 4, a heatmap of block centres and, per cell, the offsets of the block face's
four corners (top-left, top-right, bottom-right, bottom-left). A detection is a local maximum of the heatmap
above the score threshold; its corners give the perspective quad and the axis-aligned box. Crops of the
quads, rectified to the block captures' size, go to the fingerprint network like uploaded block images.

A detector is one ``.safetensors`` file whose header carries what it takes to use it
(``DetectorMetadata``), like the PCB checkpoints (``models.runtime.checkpoint``), with its own format key so
neither loader accepts the other's files.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchvision.models import mobilenet_v2

from models.runtime.checkpoint import _weights_digest
from models.runtime.transforms import IMAGENET_MEAN, IMAGENET_STD, to_rgb

logger = logging.getLogger(__name__)

DEFAULT_DETECTOR: Path = Path(__file__).resolve().parent.parent / "checkpoints" / "block_detector.safetensors"
"""The block detector shipped with the package."""

DETECTOR_FORMAT_KEY = "palletreid_detector_format"
DETECTOR_FORMAT_VERSION = "1"
STRIDE = 4
CORNER_UNIT = 16.0
"""Corner offsets are predicted in units of this many input pixels (keeps the regression targets near 1)."""
CROP_SIZE: tuple[int, int] = (280, 175)
"""(width, height) of block crops: the block captures' size."""
BLOCKS_PER_SIDE = 3
"""Blocks on a pallet's long side: at most this many detections of a side view become blocks."""
CROP_JPEG_QUALITY = 95
"""Quality of block crops encoded as block images (what the service stores and fingerprints)."""

Box = tuple[float, float, float, float]
Quad = tuple[tuple[float, float], ...]


class DetectorError(RuntimeError):
    """A detector file is missing, unreadable or does not describe a usable detector."""


@dataclass(frozen=True, slots=True)
class Detection:
    """One block found in a side view, in the original image's pixels."""

    box: Box  # x0, y0, x1, y1
    confidence: float
    quad: Quad  # the face's corners: top-left, top-right, bottom-right, bottom-left

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(value, 1) for value in self.box],
            "confidence": round(self.confidence, 4),
            "quad": [[round(x, 1), round(y, 1)] for x, y in self.quad],
        }


@dataclass(frozen=True)
class DetectorMetadata:
    input_width: int = 512
    input_height: int = 288
    neck_channels: int = 48
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    score_threshold: float = 0.3
    nms_iou: float = 0.5
    max_detections: int = 16
    model_id: str = ""
    """Filled in by ``save_detector`` from the stored weights."""
    training: dict[str, Any] = field(default_factory=dict)

    def to_header(self) -> dict[str, str]:
        header = {key: json.dumps(value) for key, value in asdict(self).items()}
        header[DETECTOR_FORMAT_KEY] = DETECTOR_FORMAT_VERSION
        return header

    @classmethod
    def from_header(cls, header: dict[str, str], source: Path) -> DetectorMetadata:
        if header.get(DETECTOR_FORMAT_KEY) != DETECTOR_FORMAT_VERSION:
            raise DetectorError(
                f"{source} is not a palletreid block detector (format {header.get(DETECTOR_FORMAT_KEY)!r}); "
                "train one with `palletreid train-detector`"
            )
        try:
            values = {item.name: json.loads(header[item.name]) for item in fields(cls) if item.name in header}
            values["mean"] = tuple(float(v) for v in values.get("mean", IMAGENET_MEAN))
            values["std"] = tuple(float(v) for v in values.get("std", IMAGENET_STD))
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise DetectorError(f"{source} has invalid detector metadata ({error})") from error

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_width, self.input_height


def _separable(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


class BlockDetectorNet(nn.Module):
    """MobileNetV2 up to stride 16 with a small top-down neck to stride 4 and two heads.

    Outputs: heatmap logits (n, 1, h/4, w/4) and corner offsets (n, 8, h/4, w/4) in ``CORNER_UNIT`` pixels
    relative to each cell's centre, ordered (x, y) for top-left, top-right, bottom-right, bottom-left.
    """

    def __init__(self, neck_channels: int = 48) -> None:
        super().__init__()
        features = mobilenet_v2(weights=None).features
        self.stem = features[:4]  # stride 4, 24 channels
        self.stage8 = features[4:7]  # stride 8, 32 channels
        self.stage16 = features[7:14]  # stride 16, 96 channels
        self.lateral4 = nn.Conv2d(24, neck_channels, 1)
        self.lateral8 = nn.Conv2d(32, neck_channels, 1)
        self.lateral16 = nn.Conv2d(96, neck_channels, 1)
        self.smooth8 = _separable(neck_channels)
        self.smooth4 = _separable(neck_channels)
        heatmap_out = nn.Conv2d(neck_channels, 1, 1)
        nn.init.constant_(cast(Tensor, heatmap_out.bias), -4.6)  # prior 1 %: most cells hold no block centre
        self.heatmap = nn.Sequential(_separable(neck_channels), heatmap_out)
        self.corners = nn.Sequential(_separable(neck_channels), nn.Conv2d(neck_channels, 8, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        level4 = self.stem(images)
        level8 = self.stage8(level4)
        level16 = self.stage16(level8)
        top = self.lateral16(level16)
        merged8 = self.smooth8(
            self.lateral8(level8) + F.interpolate(top, size=level8.shape[-2:], mode="nearest")
        )
        merged4 = self.smooth4(
            self.lateral4(level4) + F.interpolate(merged8, size=level4.shape[-2:], mode="nearest")
        )
        return self.heatmap(merged4), self.corners(merged4)


TRUNK_PARTS = (("stem", range(0, 4)), ("stage8", range(4, 7)), ("stage16", range(7, 14)))
"""Which ``features`` blocks of MobileNetV2 each trunk part holds (slices keep the original indices)."""


def trunk_state_from_imagenet(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The trunk's state dict from a torchvision MobileNetV2 ImageNet state dict (``features.0-13``)."""
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "features" or not parts[1].isdigit():
            continue
        for name, indices in TRUNK_PARTS:
            if int(parts[1]) in indices:
                mapped[".".join([name, *parts[1:]])] = value
    return mapped


@dataclass(frozen=True, slots=True)
class Letterbox:
    """How an image was fitted into the network input: scale, then padding right and bottom."""

    scale: float
    width: int  # resized image width inside the input
    height: int

    @classmethod
    def fit(cls, size: tuple[int, int], input_size: tuple[int, int]) -> Letterbox:
        scale = min(input_size[0] / size[0], input_size[1] / size[1])
        return cls(scale, max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def letterbox_array(image: Image.Image, input_size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """RGB uint8 array of ``input_size`` (width, height): the image resized into its top-left."""
    image = to_rgb(image)
    fit = Letterbox.fit(image.size, input_size)
    resized = image.resize((fit.width, fit.height), Image.Resampling.BILINEAR, reducing_gap=None)
    canvas = np.zeros((input_size[1], input_size[0], 3), np.uint8)
    canvas[: fit.height, : fit.width] = np.asarray(resized)
    return canvas, fit


def normalise(batch: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (n, h, w, 3) -> normalised float (n, 3, h, w)."""
    images = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def box_iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / union if union > 0 else 0.0


def decode(
    heatmap_logits: Tensor,
    corners: Tensor,
    *,
    score_threshold: float,
    nms_iou: float,
    max_detections: int,
) -> list[list[tuple[float, np.ndarray]]]:
    """Network outputs -> per image, (score, quad in input pixels (4, 2)) of the peaks, best first."""
    scores = torch.sigmoid(heatmap_logits)
    peaks = scores == F.max_pool2d(scores, 3, stride=1, padding=1)
    scores = torch.where(peaks, scores, torch.zeros_like(scores))
    n, _, _, cols = scores.shape
    results: list[list[tuple[float, np.ndarray]]] = []
    flat = scores.view(n, -1)
    top_scores, top_index = flat.topk(min(max_detections * 2, flat.shape[1]), dim=1)
    for image in range(n):
        kept: list[tuple[float, np.ndarray]] = []
        for score, index in zip(top_scores[image].tolist(), top_index[image].tolist(), strict=True):
            if score < score_threshold:
                break
            row, col = divmod(index, cols)
            centre = np.array([(col + 0.5) * STRIDE, (row + 0.5) * STRIDE])
            offsets = corners[image, :, row, col].float().numpy().reshape(4, 2) * CORNER_UNIT
            quad = centre + offsets
            box = _hull(quad)
            if all(box_iou(box, _hull(other)) <= nms_iou for _, other in kept):
                kept.append((score, quad))
            if len(kept) == max_detections:
                break
        results.append(kept)
    return results


def _hull(quad: np.ndarray) -> Box:
    return float(quad[:, 0].min()), float(quad[:, 1].min()), float(quad[:, 0].max()), float(quad[:, 1].max())


class BlockDetector:
    """Loaded detector: ``detect(image)`` gives the blocks of a side view, left to right."""

    def __init__(self, model: BlockDetectorNet, metadata: DetectorMetadata) -> None:
        self.model = model.eval()
        self.metadata = metadata

    @classmethod
    def load(cls, path: Path | None = None, *, num_threads: int | None = None) -> BlockDetector:
        """Load a detector file (default: the shipped ``DEFAULT_DETECTOR``)."""
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        model, metadata = load_detector(Path(path) if path is not None else DEFAULT_DETECTOR)
        return cls(model, metadata)

    def detect(self, image: Image.Image) -> list[Detection]:
        """The blocks in ``image`` (original pixels), ordered left to right by box centre."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        if not images:
            return []
        arrays, fits = zip(
            *(letterbox_array(image, self.metadata.input_size) for image in images), strict=True
        )
        batch = normalise(torch.from_numpy(np.stack(arrays)), self.metadata.mean, self.metadata.std)
        with torch.inference_mode():
            heatmap, corners = self.model(batch)
        decoded = decode(
            heatmap,
            corners,
            score_threshold=self.metadata.score_threshold,
            nms_iou=self.metadata.nms_iou,
            max_detections=self.metadata.max_detections,
        )
        results = []
        for image, fit, peaks in zip(images, fits, decoded, strict=True):
            width, height = image.size
            detections = []
            for score, quad in peaks:
                original = quad / fit.scale
                original[:, 0] = original[:, 0].clip(0, width)
                original[:, 1] = original[:, 1].clip(0, height)
                box = _hull(original)
                if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                    continue
                corners_xy = tuple((float(x), float(y)) for x, y in original)
                detections.append(Detection(box, float(score), corners_xy))
            detections.sort(key=lambda detection: (detection.box[0] + detection.box[2]) / 2)
            results.append(detections)
        return results


def _perspective_coefficients(quad: np.ndarray, size: tuple[int, int]) -> list[float] | None:
    """PIL PERSPECTIVE coefficients mapping a ``size`` rectangle onto ``quad``; None if degenerate."""
    width, height = size
    targets = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
    rows = []
    values = []
    for (x, y), (u, v) in zip(targets, quad, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        values.extend([u, v])
    try:
        solution = np.linalg.solve(np.array(rows), np.array(values))
    except np.linalg.LinAlgError:
        return None
    return [float(value) for value in solution]


def _is_usable_quad(quad: np.ndarray) -> bool:
    """Convex, clockwise in image coordinates, and filling at least half of its box."""
    edges = np.roll(quad, -1, axis=0) - quad
    following = np.roll(edges, -1, axis=0)
    cross = edges[:, 0] * following[:, 1] - edges[:, 1] * following[:, 0]
    if not np.all(cross > 0):
        return False
    x, y = quad[:, 0], quad[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    box = _hull(quad)
    return area >= 0.5 * (box[2] - box[0]) * (box[3] - box[1])


def crop_blocks(
    image: Image.Image,
    detections: Sequence[Detection],
    *,
    size: tuple[int, int] = CROP_SIZE,
    margin: float = 0.0,
) -> list[Image.Image]:
    """One RGB crop of ``size`` (width, height) per detection, in order.

    The face quad is rectified (perspective-corrected) when it is a usable quad; otherwise the axis-aligned
    box is cut out and resized. ``margin`` widens either by that fraction of the face on every side.
    """
    image = to_rgb(image)
    crops = []
    for detection in detections:
        quad = np.array(detection.quad, np.float64)
        if margin:
            centre = quad.mean(axis=0)
            quad = centre + (quad - centre) * (1 + 2 * margin)
        coefficients = _perspective_coefficients(quad, size) if _is_usable_quad(quad) else None
        if coefficients is not None:
            crop = image.transform(size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR)
        else:
            x0, y0, x1, y1 = detection.box
            pad_x, pad_y = (x1 - x0) * margin, (y1 - y0) * margin
            crop = image.crop((x0 - pad_x, y0 - pad_y, x1 + pad_x, y1 + pad_y)).resize(
                size, Image.Resampling.BILINEAR
            )
        crops.append(crop)
    return crops


def used_detections(detections: Sequence[Detection]) -> list[Detection]:
    """The ``BLOCKS_PER_SIDE`` most confident detections of a side view, kept in their left-to-right order."""
    kept = {id(d) for d in sorted(detections, key=lambda d: -d.confidence)[:BLOCKS_PER_SIDE]}
    return [detection for detection in detections if id(detection) in kept]


def encode_crop(crop: Image.Image) -> bytes:
    """A block crop as the JPEG block image a camera station would have uploaded."""
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=CROP_JPEG_QUALITY)
    return buffer.getvalue()


def save_detector(
    model: BlockDetectorNet, path: Path, metadata: DetectorMetadata, *, half: bool = True
) -> DetectorMetadata:
    """Write ``model`` (floats in fp16 unless ``half`` is False) with its header; returns the metadata."""
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        state[key] = tensor.contiguous().clone()
    final = replace(metadata, model_id=f"blockdet-mnv2-{_weights_digest(state)[:12]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    save_file(state, str(temporary), metadata=final.to_header())
    temporary.chmod(0o644)
    temporary.replace(path)
    logger.info("saved block detector %s (%s)", path, final.model_id)
    return final


def load_detector(path: Path) -> tuple[BlockDetectorNet, DetectorMetadata]:
    """Load a detector file into a float32 network in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise DetectorError(
            f"block detector {path} does not exist; train one with `palletreid train-detector`"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise DetectorError(f"block detector {path} is not a readable safetensors file ({error})") from error
    metadata = DetectorMetadata.from_header(header, path)
    model = BlockDetectorNet(metadata.neck_channels)
    expected = model.state_dict()
    if set(expected) != set(state) or any(expected[key].shape != state[key].shape for key in state):
        raise DetectorError(f"block detector {path}: weights do not match the network its header describes")
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in state.items()})
    return model.eval(), metadata
