"""One capture of a block: station geometry, optics, light, sensor and JPEG applied to the block canvas."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from models.synth.families.chipsplat.styles import StationStyle
from models.synth.families.chipsplat.texture import BlockTexture


def _symmetric(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A magnitude in ``bounds`` with a random sign."""
    return float(rng.uniform(*bounds) * rng.choice((-1.0, 1.0)))


@dataclass(frozen=True, slots=True)
class CameraSetup:
    """What stays fixed for one camera while it captures a pallet."""

    zoom: float
    tilt_x: float
    tilt_y: float
    rotation_deg: float
    exposure: float
    white_balance: tuple[float, float, float]
    light_angle: float
    light_gradient: float
    vignette: float
    vignette_centre: tuple[float, float]

    @classmethod
    def sample(cls, style: StationStyle, rng: np.random.Generator) -> CameraSetup:
        gains = np.array(style.white_balance) * (1.0 + rng.uniform(-1, 1, 3) * style.white_balance_jitter)
        return cls(
            zoom=float(rng.uniform(*style.zoom)),
            tilt_x=_symmetric(rng, style.tilt),
            tilt_y=_symmetric(rng, style.tilt) * 0.5,
            rotation_deg=_symmetric(rng, style.rotation_deg),
            exposure=float(rng.uniform(*style.exposure)),
            white_balance=(float(gains[0]), float(gains[1]), float(gains[2])),
            light_angle=float(rng.uniform(0, 2 * math.pi)),
            light_gradient=float(rng.uniform(*style.light_gradient)),
            vignette=float(rng.uniform(*style.vignette)),
            vignette_centre=(float(rng.normal(0, 0.15)), float(rng.normal(0, 0.15))),
        )


@dataclass(frozen=True, slots=True)
class FrameConditions:
    """What changes from one frame to the next: detection jitter, optics, sensor noise, compression."""

    shift: tuple[float, float]
    zoom_factor: float
    corner_offsets: tuple[float, ...]  # 8 values: (dx, dy) of the four crop corners, fraction of crop size
    exposure_factor: float
    gamma: float
    contrast: float
    saturation: float
    focus_blur: float
    motion_length: float
    motion_angle: float
    read_noise: float
    shot_noise: float
    jpeg_quality: int
    noise_seed: int

    @classmethod
    def sample(cls, style: StationStyle, rng: np.random.Generator) -> FrameConditions:
        moving = rng.random() < style.motion_probability
        return cls(
            shift=(float(rng.uniform(-1, 1) * style.shift), float(rng.uniform(-1, 1) * style.shift)),
            zoom_factor=float(1.0 + rng.uniform(-1, 1) * style.zoom_jitter),
            corner_offsets=tuple(float(v) for v in rng.uniform(-1, 1, 8) * style.corner_jitter),
            exposure_factor=float(1.0 + rng.uniform(-1, 1) * style.exposure_jitter),
            gamma=float(rng.uniform(*style.gamma)),
            contrast=float(rng.uniform(*style.contrast)),
            saturation=float(rng.uniform(*style.saturation)),
            focus_blur=float(rng.uniform(*style.focus_blur)),
            motion_length=float(rng.uniform(*style.motion_blur)) if moving else 0.0,
            motion_angle=float(rng.normal(0, 0.2) if rng.random() < 0.8 else rng.uniform(0, math.pi)),
            read_noise=float(rng.uniform(*style.read_noise)),
            shot_noise=float(rng.uniform(*style.shot_noise)),
            jpeg_quality=int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1)),
            noise_seed=int(rng.integers(0, 2**63 - 1)),
        )


def _perspective_coefficients(
    source: np.ndarray, width: int, height: int
) -> tuple[float, float, float, float, float, float, float, float]:
    """PIL PERSPECTIVE coefficients that map output corners (clockwise from top-left) to ``source`` points."""
    target = [(0.0, 0.0), (float(width), 0.0), (float(width), float(height)), (0.0, float(height))]
    matrix = np.zeros((8, 8))
    rhs = np.zeros(8)
    for index, ((x, y), (u, v)) in enumerate(zip(target, source, strict=True)):
        matrix[2 * index] = (x, y, 1, 0, 0, 0, -u * x, -u * y)
        matrix[2 * index + 1] = (0, 0, 0, x, y, 1, -v * x, -v * y)
        rhs[2 * index], rhs[2 * index + 1] = u, v
    coefficients = np.linalg.solve(matrix, rhs)
    return tuple(float(c) for c in coefficients)  # type: ignore[return-value]


def crop_quad(
    face_box: tuple[float, float, float, float], camera: CameraSetup, frame: FrameConditions, aspect: float
) -> np.ndarray:
    """The four canvas points (clockwise from top-left) that the capture's corners see."""
    x0, y0, x1, y1 = face_box
    crop_w = (x1 - x0) * camera.zoom * frame.zoom_factor
    crop_h = crop_w / aspect
    centre_x = (x0 + x1) / 2 + frame.shift[0] * crop_w
    centre_y = (y0 + y1) / 2 + frame.shift[1] * crop_h
    unit = np.array([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)])
    # keystone: one side of the crop sees a taller (or wider) stretch of the block than the other
    unit[:, 1] *= 1.0 + camera.tilt_x * np.sign(unit[:, 0]) * 2
    unit[:, 0] *= 1.0 + camera.tilt_y * np.sign(unit[:, 1]) * 2
    unit += np.array(frame.corner_offsets).reshape(4, 2)
    points = unit * np.array([crop_w, crop_h])
    angle = math.radians(camera.rotation_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return points @ rotation.T + np.array([centre_x, centre_y])


def _motion_kernel(length: float, angle: float) -> ImageFilter.Kernel:
    """A 5x5 line kernel of ``length`` pixels (at most 4) along ``angle``."""
    weights = np.zeros((5, 5))
    length = min(length, 4.0)
    for t in np.linspace(-length / 2, length / 2, 9):
        x, y = 2 + t * math.cos(angle), 2 + t * math.sin(angle)
        ix, iy = math.floor(x), math.floor(y)
        fx, fy = x - ix, y - iy
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                if 0 <= iy + dy < 5 and 0 <= ix + dx < 5:
                    weights[iy + dy, ix + dx] += wx * wy
    return ImageFilter.Kernel((5, 5), weights.ravel().tolist(), scale=float(weights.sum()))


@lru_cache(maxsize=8)
def _normalised_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x) and [-1/aspect, 1/aspect] (y)."""
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width * 2 - 1
    ys = ((np.arange(height, dtype=np.float32) + 0.5) / height * 2 - 1) * height / width
    return xs[None, :], ys[:, None]


def render_capture_array(
    texture: BlockTexture, camera: CameraSetup, frame: FrameConditions, size: tuple[int, int]
) -> np.ndarray:
    """The capture as uint8 RGB (height, width, 3) before JPEG compression."""
    width, height = size
    quad = crop_quad(texture.face_box, camera, frame, width / height)
    image = texture.image.transform(
        size,
        Image.Transform.PERSPECTIVE,
        _perspective_coefficients(quad, width, height),
        Image.Resampling.BILINEAR,
    )
    if frame.focus_blur > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(frame.focus_blur))
    if frame.motion_length > 0.5:
        image = image.filter(_motion_kernel(frame.motion_length, frame.motion_angle))
    gains = np.array(camera.white_balance, np.float32) * (camera.exposure * frame.exposure_factor / 255.0)
    pixels = np.asarray(image, dtype=np.float32) * (_illumination(camera, width, height)[..., None] * gains)
    if abs(frame.saturation - 1.0) > 1e-3:
        grey = pixels.mean(axis=2, keepdims=True)
        pixels = grey + (pixels - grey) * frame.saturation
    rng = np.random.default_rng(frame.noise_seed)
    sigma = np.sqrt(frame.shot_noise**2 * np.maximum(pixels, 0.0) + frame.read_noise**2)
    # fine luminance grain plus coarser colour noise (demosaicing spreads chroma noise over 2x2 pixels)
    luminance_noise = rng.standard_normal((height, width, 1), dtype=np.float32)
    chroma = rng.standard_normal(((height + 1) // 2, (width + 1) // 2, 3), dtype=np.float32)
    chroma_noise = chroma.repeat(2, axis=0).repeat(2, axis=1)[:height, :width]
    pixels += sigma * (0.8 * luminance_noise + 0.5 * chroma_noise)
    # gamma and contrast (about the mean brightness) as one lookup table on finely quantised linear values
    levels = np.clip(pixels * (_TONE_LEVELS - 1), 0, _TONE_LEVELS - 1).astype(np.uint16)
    pivot = float(np.clip(pixels.mean(), 0.0, 1.0)) ** (1.0 / frame.gamma)
    tone = np.linspace(0.0, 1.0, _TONE_LEVELS, dtype=np.float32) ** (1.0 / frame.gamma)
    lookup = (np.clip((tone - pivot) * frame.contrast + pivot, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return lookup[levels]


_TONE_LEVELS = 4096


def _illumination(camera: CameraSetup, width: int, height: int) -> np.ndarray:
    """Relative light over the frame: a directional gradient times an off-centre vignette."""
    xs, ys = _normalised_grid(width, height)
    direction_x, direction_y = math.cos(camera.light_angle), math.sin(camera.light_angle)
    light = 1.0 + camera.light_gradient * 0.5 * (xs * direction_x + ys * direction_y)
    radius2 = (xs - camera.vignette_centre[0]) ** 2 + (ys - camera.vignette_centre[1]) ** 2
    return light * (1.0 - camera.vignette * np.clip(radius2, 0.0, 1.5) / 1.5)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def render_capture(
    texture: BlockTexture, camera: CameraSetup, frame: FrameConditions, size: tuple[int, int] = (280, 175)
) -> Image.Image:
    """The capture as a decoded JPEG, exactly what ``palletreid synth`` writes to disk."""
    data = encode_jpeg(render_capture_array(texture, camera, frame, size), frame.jpeg_quality)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
