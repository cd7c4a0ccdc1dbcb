"""Side views for detector training: letterboxed images, augmentation and centre-point targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from models.runtime.detector import CORNER_UNIT, STRIDE
from models.runtime.images import load_image_file
from models.training.detector_annotations import AnnotatedView

GAUSSIAN_ALPHA = 0.54
"""Heatmap spread: sigma = alpha x size / 6 along each axis (TTFNet's elliptical Gaussians)."""
REGRESSION_FLOOR = 0.3
"""Cells whose heatmap target is at least this regress their block's corners (weighted by the target)."""
FLIP_ORDER = (1, 0, 3, 2)  # a horizontal flip swaps left and right corners


@dataclass(frozen=True, slots=True)
class Augmentation:
    scale: tuple[float, float] = (0.8, 1.2)
    flip: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.4
    greyscale: float = 0.05


def place(
    image: Image.Image,
    quads: np.ndarray,
    input_size: tuple[int, int],
    rng: np.random.Generator | None,
    augmentation: Augmentation,
) -> tuple[np.ndarray, np.ndarray]:
    """Resize ``image`` into the input (letterbox; with ``rng``: random scale, position and flip) and move the
    quads (k, 4, 2) with it. The blocks always stay inside the input."""
    width, height = image.size
    fit = min(input_size[0] / width, input_size[1] / height)
    scale = fit * (rng.uniform(*augmentation.scale) if rng is not None else 1.0)
    if len(quads):
        extent = quads.reshape(-1, 2)
        span = extent.max(axis=0) - extent.min(axis=0)
        scale = min(scale, 0.98 * min(input_size[0] / max(span[0], 1), input_size[1] / max(span[1], 1)))
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(image.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=None))
    moved = quads * np.array([new_size[0] / width, new_size[1] / height])
    offset = np.zeros(2)
    if rng is not None:
        low = np.array([input_size[0] - new_size[0], input_size[1] - new_size[1]], np.float64)
        high = np.zeros(2)
        if len(quads):  # keep every block inside
            extent = moved.reshape(-1, 2)
            low = np.maximum(low, -extent.min(axis=0))
            high = np.minimum(np.maximum(high, low), np.array(input_size) - extent.max(axis=0))
            high = np.maximum(high, low)
        offset = np.round(rng.uniform(np.minimum(low, high), high))
    canvas = np.zeros((input_size[1], input_size[0], 3), np.uint8)
    x0, y0 = int(offset[0]), int(offset[1])
    src_x0, src_y0 = max(0, -x0), max(0, -y0)
    dst_x0, dst_y0 = max(0, x0), max(0, y0)
    w = min(new_size[0] - src_x0, input_size[0] - dst_x0)
    h = min(new_size[1] - src_y0, input_size[1] - dst_y0)
    canvas[dst_y0 : dst_y0 + h, dst_x0 : dst_x0 + w] = resized[src_y0 : src_y0 + h, src_x0 : src_x0 + w]
    moved = moved + offset
    if rng is not None and rng.random() < augmentation.flip:
        canvas = canvas[:, ::-1].copy()
        moved = moved[:, FLIP_ORDER]
        moved[..., 0] = input_size[0] - moved[..., 0]
    if rng is not None:
        canvas = _photometric(canvas, rng, augmentation)
    return canvas, moved


def _photometric(pixels: np.ndarray, rng: np.random.Generator, augmentation: Augmentation) -> np.ndarray:
    image = pixels.astype(np.float32)
    grey = image.mean(axis=2, keepdims=True)
    saturation = (
        0.0
        if rng.random() < augmentation.greyscale
        else rng.uniform(1 - augmentation.saturation, 1 + augmentation.saturation)
    )
    image = grey + (image - grey) * saturation
    mean = image.mean()
    image = (image - mean) * rng.uniform(1 - augmentation.contrast, 1 + augmentation.contrast) + mean
    image *= rng.uniform(1 - augmentation.brightness, 1 + augmentation.brightness)
    return np.clip(image, 0, 255).astype(np.uint8)


def build_targets(quads: np.ndarray, input_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Heatmap (1, h, w), corner offsets (8, h, w) in ``CORNER_UNIT`` and their weights (1, h, w)."""
    cols, rows = input_size[0] // STRIDE, input_size[1] // STRIDE
    heatmap = np.zeros((rows, cols), np.float32)
    owner = np.full((rows, cols), -1, np.int64)
    corners = np.zeros((8, rows, cols), np.float32)
    weights = np.zeros((rows, cols), np.float32)
    grid_x = (np.arange(cols, dtype=np.float32) + 0.5) * STRIDE
    grid_y = (np.arange(rows, dtype=np.float32) + 0.5) * STRIDE
    for index, quad in enumerate(quads):
        centre = quad.mean(axis=0)
        width = quad[:, 0].max() - quad[:, 0].min()
        height = quad[:, 1].max() - quad[:, 1].min()
        sigma_x = max(0.5, GAUSSIAN_ALPHA * width / 6)
        sigma_y = max(0.5, GAUSSIAN_ALPHA * height / 6)
        peak_col = min(cols - 1, max(0, int(centre[0] // STRIDE)))
        peak_row = min(rows - 1, max(0, int(centre[1] // STRIDE)))
        gaussian = np.exp(
            -((grid_x[None, :] - centre[0]) ** 2) / (2 * sigma_x**2)
            - ((grid_y[:, None] - centre[1]) ** 2) / (2 * sigma_y**2)
        ).astype(np.float32)
        gaussian /= gaussian[peak_row, peak_col]
        gaussian = np.minimum(gaussian, 0.99)  # one positive per block, even for a centre on a cell border
        gaussian[peak_row, peak_col] = 1.0
        better = gaussian > heatmap
        heatmap = np.where(better, gaussian, heatmap)
        owner = np.where(better, index, owner)
    for index, quad in enumerate(quads):
        mask = (owner == index) & (heatmap >= REGRESSION_FLOOR)
        if not mask.any():
            continue
        for corner in range(4):
            corners[2 * corner][mask] = (
                (quad[corner, 0] - grid_x[None, :]) / CORNER_UNIT * np.ones((rows, 1))
            )[mask]
            corners[2 * corner + 1][mask] = (
                (quad[corner, 1] - grid_y[:, None]) / CORNER_UNIT * np.ones((1, cols))
            )[mask]
        weights[mask] = heatmap[mask]
    return torch.from_numpy(heatmap[None]), torch.from_numpy(corners), torch.from_numpy(weights[None])


class SideViewDataset(Dataset[tuple[Tensor, Tensor, Tensor, Tensor]]):
    """Annotated side views as (uint8 image (h, w, 3), heatmap, corners, weights); augmented if asked."""

    def __init__(
        self,
        views: Sequence[AnnotatedView],
        input_size: tuple[int, int],
        *,
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.views = list(views)
        self.input_size = input_size
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.views)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        view = self.views[index]
        image = load_image_file(view.path)
        quads = np.array([block.quad for block in view.blocks], np.float64).reshape(-1, 4, 2)
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.augmentation is not None else None
        return place(image, quads, self.input_size, rng, self.augmentation or Augmentation())

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        pixels, quads = self.sample(index)
        heatmap, corners, weights = build_targets(quads, self.input_size)
        return torch.from_numpy(pixels), heatmap, corners, weights


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """CenterNet's penalty-reduced focal loss on heatmap logits, normalised by the number of centres."""
    positive = target.eq(1.0).float()
    log_p = torch.nn.functional.logsigmoid(logits)
    log_not_p = torch.nn.functional.logsigmoid(-logits)
    probability = torch.sigmoid(logits)
    positive_loss = (log_p * (1 - probability) ** 2 * positive).sum()
    negative_loss = (log_not_p * probability**2 * (1 - target) ** 4 * (1 - positive)).sum()
    return -(positive_loss + negative_loss) / positive.sum().clamp(min=1.0)


def corner_loss(predicted: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Weighted L1 over the eight corner coordinates, in ``CORNER_UNIT`` (1/16 = one input pixel)."""
    total = weights.sum().clamp(min=1e-6)
    return ((predicted - target).abs() * weights).sum() / (total * 8)
