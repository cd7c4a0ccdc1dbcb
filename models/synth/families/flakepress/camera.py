"""The flakepress capture model: a posed pinhole camera with a real lens, a lamp, a Bayer sensor and an ISP.

Different in kind from the chipsplat captures (a quad cut from a flat image plus gains and noise):

* geometry: the face is a plane seen by a camera with yaw, pitch and roll at some distance (perspective), the
  block sits off the optical axis, the lens distorts radially (barrel or pincushion); the block detector's
  axis-aligned box around the projected face, padded and jittered, is resized to the capture size (so the
  capture is squeezed as a detector crop is);
* light: a point lamp in front of the face lights its relief (each flake's height), falls off with distance,
  adds a specular glint on metal; its colour is a black-body temperature with a green/magenta tint;
* exposure: auto-exposure meters the scene (centre-weighted) and aims at the station's target; cos^4
  vignetting; rolling exposure under flickering light (bands across rows); motion during the exposure (blur)
  and during the row-by-row read-out (rolling-shutter skew); lens defocus as a disc;
* sensor: a Bayer mosaic with photon (shot), read and row noise in electrons, clipping and 10-bit
  quantisation, bilinear demosaicing;
* ISP: auto white balance between the light's preset and a grey-world estimate, a colour matrix, an sRGB or
  filmic tone curve, unsharp-mask sharpening, JPEG (quality 30-92, 4:2:0 or 4:4:4, re-compressed by video
  recorders).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from models.synth.families.flakepress.board import PressedBlock

FloatArray = np.ndarray
Range = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Station:
    """Ranges a station's cameras (per pallet) and frames draw from; magnitudes get a random sign."""

    name: str
    description: str
    # pose and optics (camera level)
    yaw_deg: Range
    pitch_deg: Range
    roll_deg: Range
    face_width: Range  # projected face width, fraction of the sensor width
    distance: Range  # camera distance in face widths: short = strong perspective
    off_axis: float  # block centre's distance from the optical axis, fraction of the half sensor width
    k1: Range  # radial distortion (negative: barrel)
    vignette: Range
    # detector box (frame level)
    crop_pad: Range  # box size / bounding box of the projected face
    crop_jitter: float  # box centre jitter, fraction of the box size
    # light (camera level)
    lamp_elevation_deg: Range
    lamp_distance: Range  # face widths
    ambient: Range
    relief: Range  # how strongly the surface relief shows in the shading
    colour_temperature: Range  # kelvin
    tint: Range  # green (+) / magenta (-) shift
    flicker: Range  # rolling-exposure band depth
    flicker_probability: float
    # exposure and motion (camera level target, frame level jitter)
    ae_target: Range  # metered linear mean the auto-exposure aims at
    ae_jitter: float
    motion: Range  # blur length in output pixels
    motion_probability: float
    rolling_skew: Range  # rolling-shutter skew relative to the blur length
    defocus: Range  # disc radius in output pixels
    # sensor and processing
    full_well: Range  # electrons at full scale: lower = noisier
    read_noise: Range  # electrons
    row_noise: Range  # electrons
    awb_strength: Range  # 0: the light's preset, 1: grey world
    saturation: Range
    filmic: bool  # tone curve: filmic shoulder instead of plain sRGB
    tone_contrast: Range
    sharpen: Range
    jpeg_quality: tuple[int, int]
    full_chroma_probability: float  # 4:4:4 instead of 4:2:0
    recompress_probability: float  # a recorder decodes and encodes again


STATIONS: dict[str, Station] = {
    station.name: station
    for station in (
        Station(
            name="cctv",
            description="gate CCTV: barrel lens, off-axis block, warm sodium light, dark, noisy, re-encoded",
            yaw_deg=(0.0, 18.0),
            pitch_deg=(5.0, 20.0),
            roll_deg=(0.0, 3.0),
            face_width=(0.12, 0.22),
            distance=(2.0, 4.0),
            off_axis=0.5,
            k1=(-0.22, -0.08),
            vignette=(0.3, 0.6),
            crop_pad=(1.02, 1.2),
            crop_jitter=0.04,
            lamp_elevation_deg=(35.0, 65.0),
            lamp_distance=(3.0, 6.0),
            ambient=(0.3, 0.5),
            relief=(0.4, 0.9),
            colour_temperature=(2200.0, 3200.0),
            tint=(-0.02, 0.03),
            flicker=(0.0, 0.05),
            flicker_probability=0.2,
            ae_target=(0.02, 0.05),
            ae_jitter=0.12,
            motion=(0.0, 2.0),
            motion_probability=0.3,
            rolling_skew=(0.0, 0.5),
            defocus=(0.5, 1.3),
            full_well=(700.0, 1800.0),
            read_noise=(3.0, 8.0),
            row_noise=(0.5, 2.5),
            awb_strength=(0.0, 0.2),
            saturation=(0.85, 1.05),
            filmic=False,
            tone_contrast=(0.9, 1.05),
            sharpen=(0.0, 0.4),
            jpeg_quality=(30, 60),
            full_chroma_probability=0.0,
            recompress_probability=0.6,
        ),
        Station(
            name="handheld",
            description="phone on a forklift: free pose, hand shake, rolling shutter, punchy filmic look",
            yaw_deg=(0.0, 25.0),
            pitch_deg=(0.0, 15.0),
            roll_deg=(0.0, 8.0),
            face_width=(0.3, 0.6),
            distance=(1.2, 2.5),
            off_axis=0.25,
            k1=(-0.04, 0.03),
            vignette=(0.05, 0.25),
            crop_pad=(0.95, 1.15),
            crop_jitter=0.05,
            lamp_elevation_deg=(40.0, 80.0),
            lamp_distance=(4.0, 12.0),
            ambient=(0.4, 0.7),
            relief=(0.3, 0.8),
            colour_temperature=(4500.0, 6800.0),
            tint=(-0.02, 0.02),
            flicker=(0.0, 0.0),
            flicker_probability=0.0,
            ae_target=(0.035, 0.09),
            ae_jitter=0.1,
            motion=(0.5, 3.5),
            motion_probability=0.5,
            rolling_skew=(0.3, 1.2),
            defocus=(0.0, 0.7),
            full_well=(2500.0, 8000.0),
            read_noise=(1.5, 4.0),
            row_noise=(0.0, 0.8),
            awb_strength=(0.1, 0.4),
            saturation=(1.05, 1.35),
            filmic=True,
            tone_contrast=(1.0, 1.25),
            sharpen=(0.6, 1.4),
            jpeg_quality=(72, 92),
            full_chroma_probability=0.3,
            recompress_probability=0.0,
        ),
        Station(
            name="floodlight",
            description="night dock under LED floodlights: raking light, deep relief, PWM flicker bands",
            yaw_deg=(0.0, 12.0),
            pitch_deg=(0.0, 10.0),
            roll_deg=(0.0, 2.0),
            face_width=(0.2, 0.4),
            distance=(2.5, 5.0),
            off_axis=0.3,
            k1=(-0.08, 0.0),
            vignette=(0.1, 0.35),
            crop_pad=(1.0, 1.15),
            crop_jitter=0.03,
            lamp_elevation_deg=(12.0, 35.0),
            lamp_distance=(2.0, 4.0),
            ambient=(0.15, 0.3),
            relief=(0.6, 1.2),
            colour_temperature=(4800.0, 6500.0),
            tint=(0.0, 0.04),
            flicker=(0.04, 0.15),
            flicker_probability=0.7,
            ae_target=(0.02, 0.055),
            ae_jitter=0.15,
            motion=(0.0, 1.5),
            motion_probability=0.2,
            rolling_skew=(0.0, 0.3),
            defocus=(0.2, 0.8),
            full_well=(1200.0, 3500.0),
            read_noise=(2.0, 5.0),
            row_noise=(0.3, 1.5),
            awb_strength=(0.0, 0.3),
            saturation=(0.95, 1.15),
            filmic=False,
            tone_contrast=(0.95, 1.15),
            sharpen=(0.2, 0.8),
            jpeg_quality=(55, 82),
            full_chroma_probability=0.2,
            recompress_probability=0.2,
        ),
        Station(
            name="tunnel",
            description="conveyor tunnel, ring light at the lens: frontal hot spot, fast motion, skewed rows",
            yaw_deg=(0.0, 8.0),
            pitch_deg=(0.0, 8.0),
            roll_deg=(0.0, 5.0),
            face_width=(0.35, 0.7),
            distance=(1.5, 3.0),
            off_axis=0.15,
            k1=(-0.12, -0.02),
            vignette=(0.1, 0.3),
            crop_pad=(1.05, 1.3),
            crop_jitter=0.06,
            lamp_elevation_deg=(75.0, 90.0),
            lamp_distance=(1.4, 2.6),
            ambient=(0.05, 0.2),
            relief=(0.3, 0.7),
            colour_temperature=(3800.0, 4800.0),
            tint=(0.02, 0.06),
            flicker=(0.02, 0.08),
            flicker_probability=0.4,
            ae_target=(0.025, 0.065),
            ae_jitter=0.08,
            motion=(1.0, 5.0),
            motion_probability=0.9,
            rolling_skew=(0.5, 1.5),
            defocus=(0.2, 1.0),
            full_well=(1500.0, 4000.0),
            read_noise=(2.0, 5.0),
            row_noise=(0.2, 1.0),
            awb_strength=(0.0, 0.3),
            saturation=(0.9, 1.1),
            filmic=False,
            tone_contrast=(1.0, 1.2),
            sharpen=(0.3, 1.0),
            jpeg_quality=(40, 72),
            full_chroma_probability=0.0,
            recompress_probability=0.3,
        ),
    )
}


def _signed(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(*bounds) * rng.choice((-1.0, 1.0)))


def illuminant(kelvin: float, tint: float) -> FloatArray:
    """RGB of a black body at ``kelvin`` (green = 1), shifted towards green (+) or magenta (-)."""
    scaled = kelvin / 100.0
    red = 1.0 if scaled <= 66 else 1.292936 * (scaled - 60) ** -0.1332048
    green = (
        0.3900816 * math.log(scaled) - 0.6318414 if scaled <= 66 else 1.129891 * (scaled - 60) ** -0.0755148
    )
    blue = 1.0 if scaled >= 66 else (0.0 if scaled <= 19 else 0.5432068 * math.log(scaled - 10) - 1.1962541)
    rgb = np.clip(np.array([red, green, blue], np.float32), 0.05, None)
    rgb *= np.array([1.0 - tint, 1.0 + tint, 1.0 - tint], np.float32)
    return rgb / rgb[1]


def _rotation(yaw: float, pitch: float, roll: float) -> FloatArray:
    cy, sy, cp, sp, cr, sr = (
        math.cos(yaw),
        math.sin(yaw),
        math.cos(pitch),
        math.sin(pitch),
        math.cos(roll),
        math.sin(roll),
    )
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_x = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    about_z = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return about_z @ about_x @ about_y


@dataclass(frozen=True, slots=True)
class Rig:
    """One camera and its lamp, fixed while a pallet passes."""

    station: Station
    plane_to_ray: FloatArray  # 3x3: face-plane (X, Y, 1) in face widths -> ray (x, y, 1)
    focal: float  # sensor half-widths per unit ray slope
    centre_offset: tuple[float, float]  # block centre from the optical axis, sensor half-widths
    k1: float
    vignette: float
    lamp: tuple[float, float, float]  # face widths from the face centre, z towards the camera
    ambient: float
    relief: float
    light: FloatArray  # (3,) RGB of the lamp
    white_balance_bias: FloatArray  # (3,) the camera's own preset error
    colour_matrix: FloatArray  # (3, 3)
    awb_strength: float
    ae_target: float
    flicker: float
    flicker_period: float  # rows
    full_well: float
    read_noise: float
    row_noise: float
    tone_contrast: float
    sharpen: float
    bayer_phase: int  # which of RGGB, GRBG, GBRG, BGGR

    @classmethod
    def sample(cls, station: Station, rng: np.random.Generator) -> Rig:
        rotation = _rotation(
            math.radians(_signed(rng, station.yaw_deg)),
            math.radians(_signed(rng, station.pitch_deg)),
            math.radians(_signed(rng, station.roll_deg)),
        )
        distance = float(rng.uniform(*station.distance))
        focal = float(rng.uniform(*station.face_width)) * 2.0 * distance
        homography = np.column_stack([rotation[:, 0], rotation[:, 1], [0.0, 0.0, distance]])
        azimuth = rng.uniform(0, 2 * math.pi)
        elevation = math.radians(rng.uniform(*station.lamp_elevation_deg))
        lamp_distance = float(rng.uniform(*station.lamp_distance))
        saturation = float(rng.uniform(*station.saturation))
        grey = np.full((3, 3), 1.0 / 3.0)
        crosstalk = np.eye(3) + rng.normal(0.0, 0.04, (3, 3))
        crosstalk /= crosstalk.sum(axis=1, keepdims=True)
        offset_angle = rng.uniform(0, 2 * math.pi)
        offset = rng.uniform(0.0, station.off_axis)
        return cls(
            station=station,
            plane_to_ray=np.linalg.inv(homography),
            focal=focal,
            centre_offset=(offset * math.cos(offset_angle), offset * math.sin(offset_angle) * 0.6),
            k1=float(rng.uniform(*station.k1)),
            vignette=float(rng.uniform(*station.vignette)),
            lamp=(
                lamp_distance * math.cos(elevation) * math.cos(azimuth),
                lamp_distance * math.cos(elevation) * math.sin(azimuth),
                lamp_distance * math.sin(elevation),
            ),
            ambient=float(rng.uniform(*station.ambient)),
            relief=float(rng.uniform(*station.relief)),
            light=illuminant(
                float(rng.uniform(*station.colour_temperature)), float(rng.uniform(*station.tint))
            ),
            white_balance_bias=np.exp(rng.normal(0.0, 0.05, 3)).astype(np.float32),
            colour_matrix=((np.eye(3) * saturation + grey * (1 - saturation)) @ crosstalk).astype(np.float32),
            awb_strength=float(rng.uniform(*station.awb_strength)),
            ae_target=float(rng.uniform(*station.ae_target)),
            flicker=float(rng.uniform(*station.flicker))
            if rng.random() < station.flicker_probability
            else 0.0,
            flicker_period=float(rng.uniform(25.0, 120.0)),
            full_well=float(rng.uniform(*station.full_well)),
            read_noise=float(rng.uniform(*station.read_noise)),
            row_noise=float(rng.uniform(*station.row_noise)),
            tone_contrast=float(rng.uniform(*station.tone_contrast)),
            sharpen=float(rng.uniform(*station.sharpen)),
            bayer_phase=int(rng.integers(4)),
        )


@dataclass(frozen=True, slots=True)
class Shot:
    """What changes from frame to frame."""

    pad: tuple[float, float]
    jitter: tuple[float, float]
    exposure: float  # auto-exposure hunting around the target
    flicker_phase: float
    motion: tuple[float, float]  # blur vector in output pixels
    skew: float
    defocus: float
    jpeg_quality: int
    full_chroma: bool
    recompress_quality: int  # 0: none
    noise_seed: int

    @classmethod
    def sample(cls, station: Station, rng: np.random.Generator) -> Shot:
        pad = float(rng.uniform(*station.crop_pad))
        moving = rng.random() < station.motion_probability
        length = float(rng.uniform(*station.motion)) if moving else 0.0
        direction = float(rng.normal(0.0, 0.3) if rng.random() < 0.7 else rng.uniform(0, math.pi))
        low, high = station.jpeg_quality
        return cls(
            pad=(pad * float(rng.uniform(0.97, 1.03)), pad * float(rng.uniform(0.97, 1.03))),
            jitter=(float(rng.normal(0, station.crop_jitter)), float(rng.normal(0, station.crop_jitter))),
            exposure=float(math.exp(rng.normal(0.0, station.ae_jitter))),
            flicker_phase=float(rng.uniform(0, 1)),
            motion=(length * math.cos(direction), length * math.sin(direction)),
            skew=float(rng.uniform(*station.rolling_skew)),
            defocus=float(rng.uniform(*station.defocus)),
            jpeg_quality=int(rng.integers(low, high + 1)),
            full_chroma=bool(rng.random() < station.full_chroma_probability),
            recompress_quality=int(rng.integers(low, high + 1))
            if rng.random() < station.recompress_probability
            else 0,
            noise_seed=int(rng.integers(0, 2**63 - 1)),
        )


def _slopes(height: FloatArray) -> tuple[FloatArray, FloatArray]:
    slope_y, slope_x = np.gradient(height)
    return slope_x.astype(np.float32), slope_y.astype(np.float32)


class LitBlock:
    """A block's canvas radiance under one rig's lamp, and its 2x2 box pre-filtered version (made once)."""

    def __init__(self, image: FloatArray) -> None:
        self.image = image
        self._filtered: LitBlock | None = None

    @property
    def filtered(self) -> LitBlock:
        if self._filtered is None:
            image = self.image
            self._filtered = LitBlock(
                (image[:-1, :-1] + image[1:, :-1] + image[:-1, 1:] + image[1:, 1:]) * 0.25
            )
        return self._filtered


def light_block(block: PressedBlock, rig: Rig) -> LitBlock:
    """Radiance of the canvas under the rig's lamp: diffuse shading of the relief, falloff, metal glints."""
    rows, cols = block.height.shape
    x0, y0, x1, y1 = block.face
    face_w = x1 - x0
    xs = (np.arange(cols, dtype=np.float32)[None, :] - (x0 + x1) / 2) / face_w
    ys = (np.arange(rows, dtype=np.float32)[:, None] - (y0 + y1) / 2) / face_w
    lamp_x, lamp_y, lamp_z = rig.lamp
    to_lamp_x, to_lamp_y = lamp_x - xs, lamp_y - ys
    distance2 = to_lamp_x**2 + to_lamp_y**2 + lamp_z**2
    slope_x, slope_y = _slopes(block.height)
    slope_x *= rig.relief
    slope_y *= rig.relief
    # canvas y grows downwards and the height towards the camera: normal = (-dh/dx, -dh/dy, 1)
    normal_length = np.sqrt(slope_x * slope_x + slope_y * slope_y + 1.0)
    distance = np.sqrt(distance2)
    cosine = (lamp_z - slope_x * to_lamp_x - slope_y * to_lamp_y) / (normal_length * distance)
    centre = lamp_z / math.sqrt(lamp_x**2 + lamp_y**2 + lamp_z**2) / (lamp_x**2 + lamp_y**2 + lamp_z**2)
    shade = np.clip(cosine, 0.0, None) / distance2 * ((1.0 - rig.ambient) / centre) + rig.ambient
    radiance = block.albedo * shade[..., None]
    shiny_rows = np.flatnonzero(block.gloss.any(axis=1))
    if shiny_rows.size:  # specular glints of metal, only where there is any
        shiny_cols = np.flatnonzero(block.gloss.any(axis=0))
        window = (slice(shiny_rows[0], shiny_rows[-1] + 1), slice(shiny_cols[0], shiny_cols[-1] + 1))
        near = distance[window]
        lx = np.broadcast_to(to_lamp_x, distance.shape)[window] / near
        ly = np.broadcast_to(to_lamp_y, distance.shape)[window] / near
        half_z = lamp_z / near + 1.0
        half_norm = np.sqrt(lx * lx + ly * ly + half_z * half_z)
        n_dot_h = (half_z - slope_x[window] * lx - slope_y[window] * ly) / (normal_length[window] * half_norm)
        radiance[window] += (block.gloss[window] * np.clip(n_dot_h, 0.0, 1.0) ** 40 * 0.8)[..., None]
    return LitBlock((radiance * rig.light).astype(np.float32))


def _distort(x: FloatArray, y: FloatArray, k1: float) -> tuple[FloatArray, FloatArray]:
    factor = 1.0 + k1 * (x * x + y * y)
    return x * factor, y * factor


def _undistort(x: FloatArray, y: FloatArray, k1: float) -> tuple[FloatArray, FloatArray]:
    ideal_x, ideal_y = x, y
    for _ in range(4):
        factor = 1.0 + k1 * (ideal_x * ideal_x + ideal_y * ideal_y)
        ideal_x, ideal_y = x / factor, y / factor
    return ideal_x, ideal_y


def _project(rig: Rig, plane_x: FloatArray, plane_y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Face-plane points (face widths) to distorted sensor coordinates (half widths)."""
    ray = np.linalg.inv(rig.plane_to_ray) @ np.stack([plane_x, plane_y, np.ones_like(plane_x)])
    ideal_x = rig.focal * ray[0] / ray[2] + rig.centre_offset[0]
    ideal_y = rig.focal * ray[1] / ray[2] + rig.centre_offset[1]
    return _distort(ideal_x, ideal_y, rig.k1)


def detector_box(rig: Rig, shot: Shot, face_aspect: float) -> tuple[float, float, float, float]:
    """The detector's axis-aligned box (sensor coordinates) around the projected face, padded and jittered."""
    t = np.linspace(-0.5, 0.5, 9)
    half_h = face_aspect / 2
    plane_x = np.concatenate([t, np.full(9, 0.5), -t, np.full(9, -0.5)])
    plane_y = np.concatenate([np.full(9, -half_h), t * face_aspect, np.full(9, half_h), -t * face_aspect])
    xs, ys = _project(rig, plane_x, plane_y)
    width, height = (xs.max() - xs.min()) * shot.pad[0], (ys.max() - ys.min()) * shot.pad[1]
    centre_x = (xs.max() + xs.min()) / 2 + shot.jitter[0] * width
    centre_y = (ys.max() + ys.min()) / 2 + shot.jitter[1] * height
    return centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2


def _bilinear(image: FloatArray, u: FloatArray, v: FloatArray) -> FloatArray:
    """Sample ``image`` (rows, cols, channels) at canvas coordinates (u: x, v: y), bilinearly."""
    rows, cols, channels = image.shape
    u = np.clip(u, 0.0, cols - 1.001)
    v = np.clip(v, 0.0, rows - 1.001)
    u0, v0 = u.astype(np.int32), v.astype(np.int32)
    fu, fv = (u - u0)[..., None], (v - v0)[..., None]
    flat = image.reshape(-1, channels)
    index = v0 * cols + u0
    top, top_right = np.take(flat, index, axis=0), np.take(flat, index + 1, axis=0)
    bottom, bottom_right = np.take(flat, index + cols, axis=0), np.take(flat, index + cols + 1, axis=0)
    top += (top_right - top) * fu
    bottom += (bottom_right - bottom) * fu
    top += (bottom - top) * fv
    return top


def _disc_kernel(radius: float) -> FloatArray:
    reach = math.ceil(radius)
    ys, xs = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    kernel = np.clip(radius + 0.5 - np.hypot(xs, ys), 0.0, 1.0)
    return (kernel / kernel.sum()).astype(np.float32)


@lru_cache(maxsize=16)
def _bayer_masks(rows: int, cols: int, phase: int) -> FloatArray:
    """(3, rows, cols) 0/1 masks of the red, green and blue photosites."""
    masks = np.zeros((3, rows, cols), np.float32)
    red_y, red_x = phase // 2, phase % 2  # red site within the 2x2 cell; blue diagonal to it
    masks[0, red_y::2, red_x::2] = 1
    masks[2, 1 - red_y :: 2, 1 - red_x :: 2] = 1
    masks[1] = 1 - masks[0] - masks[2]
    return masks


@lru_cache(maxsize=16)
def _bayer_sites(rows: int, cols: int, phase: int) -> np.ndarray:
    """(rows, cols, 1) colour index (0 red, 1 green, 2 blue) of each photosite."""
    masks = _bayer_masks(rows, cols, phase)
    return (masks[1] + 2 * masks[2]).astype(np.intp)[..., None]


_DEMOSAIC_KERNEL = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)


@lru_cache(maxsize=16)
def _mask_weights(rows: int, cols: int, phase: int) -> FloatArray:
    masks = _bayer_masks(rows, cols, phase)
    return np.stack([ndimage.correlate(mask, _DEMOSAIC_KERNEL, mode="mirror") for mask in masks])


def _demosaic(raw: FloatArray, phase: int) -> FloatArray:
    """Bilinear demosaicing (normalised convolution of each colour's photosites)."""
    rows, cols = raw.shape
    masks = _bayer_masks(rows, cols, phase)
    weights = _mask_weights(rows, cols, phase)
    planes = [
        np.where(mask > 0, raw, ndimage.correlate(raw * mask, _DEMOSAIC_KERNEL, mode="mirror") / weight)
        for mask, weight in zip(masks, weights, strict=True)
    ]
    return np.stack(planes, axis=2)


def _tone(linear: FloatArray, filmic: bool, contrast: float) -> FloatArray:
    linear = np.clip(linear, 0.0, None)
    if filmic:
        shoulder = linear * (1.0 + linear / 4.0) / (1.0 + linear)  # soft highlight roll-off
        encoded = np.power(shoulder, 1.0 / 2.2)
    else:
        linear = np.clip(linear, 0.0, 1.0)
        encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1.0 / 2.4) - 0.055)
    mean = float(encoded.mean())
    return np.clip(mean + (encoded - mean) * contrast, 0.0, 1.0)


def _view(
    radiance: LitBlock, block: PressedBlock, rig: Rig, shot: Shot, size: tuple[int, int]
) -> tuple[FloatArray, FloatArray]:
    """What reaches the sensor through the detector box: (image, squared sensor radius) at output size.

    Motion: taps spread over the exposure; rolling shutter: each row sees the scene at its read-out time.
    """
    width, height = size
    x0, y0, x1, y1 = block.face
    face_w = x1 - x0
    left, top, right, bottom = (float(value) for value in detector_box(rig, shot, (y1 - y0) / face_w))
    pixel_w, pixel_h = (right - left) / width, (bottom - top) / height
    sensor_x = np.broadcast_to(
        left + (np.arange(width, dtype=np.float32)[None, :] + 0.5) * pixel_w, (height, width)
    )
    sensor_y = np.broadcast_to(
        top + (np.arange(height, dtype=np.float32)[:, None] + 0.5) * pixel_h, (height, width)
    )
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = rig.plane_to_ray.tolist()
    ideal_x, ideal_y = _undistort(sensor_x, sensor_y, rig.k1)
    ray_x = (ideal_x - rig.centre_offset[0]) / rig.focal
    ray_y = (ideal_y - rig.centre_offset[1]) / rig.focal
    scale = face_w / (m20 * ray_x + m21 * ray_y + m22)
    u = (x0 + x1) / 2 + (m00 * ray_x + m01 * ray_y + m02) * scale
    v = (y0 + y1) / 2 + (m10 * ray_x + m11 * ray_y + m12) * scale
    # canvas pixels per output pixel; above ~1.3 a 2x2 box pre-filter keeps the flakes from aliasing
    source = radiance
    if float(np.abs(np.diff(u[height // 2])).mean()) > 1.3:
        source = radiance.filtered
        u -= 0.5
        v -= 0.5
    length = math.hypot(*shot.motion)
    if length < 0.3:
        return _bilinear(source.image, u, v), sensor_x * sensor_x + sensor_y * sensor_y
    # motion: the scene moves by ``shot.motion`` output pixels during the exposure (taps over it), and each
    # row is read out a little later than the one above (rolling shutter: the skew); both as canvas shifts
    # along the local derivatives of the mapping
    move_u = shot.motion[0] * np.gradient(u, axis=1) + shot.motion[1] * np.gradient(u, axis=0)
    move_v = shot.motion[0] * np.gradient(v, axis=1) + shot.motion[1] * np.gradient(v, axis=0)
    row_time = (np.arange(height, dtype=np.float32)[:, None] / height - 0.5) * shot.skew
    taps = np.linspace(-0.5, 0.5, min(4, max(2, math.ceil(length / 1.2)))).tolist()
    image = np.zeros((height, width, 3), np.float32)
    for tap in taps:
        image += _bilinear(source.image, u + move_u * (row_time + tap), v + move_v * (row_time + tap))
    image *= 1.0 / len(taps)
    return image, sensor_x * sensor_x + sensor_y * sensor_y


def _expose(image: FloatArray, radius2: FloatArray, rig: Rig, shot: Shot) -> FloatArray:
    """Defocus, cos^4 vignetting, auto-exposure (centre-weighted metering) and flicker bands over the rows."""
    height, width = image.shape[:2]
    if shot.defocus > 0.35:
        image = ndimage.correlate(image, _disc_kernel(shot.defocus)[..., None], mode="nearest")
    image *= (1.0 / (1.0 + radius2 * rig.vignette) ** 2)[..., None]
    metered = float((image.mean(axis=2) * _metering_weights(height, width)).sum())
    image *= rig.ae_target * shot.exposure / max(metered, 1e-4)
    if rig.flicker:
        rows = np.arange(height, dtype=np.float32)
        bands = 1.0 + rig.flicker * np.sin((rows / rig.flicker_period + shot.flicker_phase) * (2 * math.pi))
        image *= bands[:, None, None]
    return image


def _sense(image: FloatArray, rig: Rig, shot: Shot) -> FloatArray:
    """The Bayer sensor: electrons with shot, read and row noise, clipped, 10-bit; demosaiced to RGB."""
    height, width = image.shape[:2]
    noise = np.random.default_rng(shot.noise_seed)
    electrons = np.take_along_axis(image, _bayer_sites(height, width, rig.bayer_phase), axis=2)[..., 0]
    electrons *= rig.full_well
    electrons += np.sqrt(np.clip(electrons, 0.0, None)) * noise.standard_normal(
        electrons.shape, dtype=np.float32
    )
    electrons += rig.read_noise * noise.standard_normal(electrons.shape, dtype=np.float32)
    electrons += rig.row_noise * noise.standard_normal((height, 1), dtype=np.float32)
    raw = np.round(np.clip(electrons * (1023.0 / rig.full_well), 0.0, 1023.0)) * (1.0 / 1023.0)
    return _demosaic(raw, rig.bayer_phase)


def _process(rgb: FloatArray, rig: Rig) -> np.ndarray:
    """The ISP: white balance (lamp preset to grey world), colour matrix, tone curve, sharpening."""
    height, width = rgb.shape[:2]
    centre = rgb[height // 5 : -height // 5, width // 5 : -width // 5].reshape(-1, 3).mean(axis=0) + 1e-5
    grey_world = centre[1] / centre
    gains = (
        rig.white_balance_bias * (1.0 / rig.light) ** (1 - rig.awb_strength) * grey_world**rig.awb_strength
    )
    rgb = rgb @ (rig.colour_matrix * gains[None, :]).T
    encoded = _tone(rgb, rig.station.filmic, rig.tone_contrast)
    if rig.sharpen > 0.05:
        detail = encoded - ndimage.uniform_filter(encoded, size=(3, 3, 1))
        encoded = np.clip(encoded + rig.sharpen * detail, 0.0, 1.0)
    return (encoded * 255.0 + 0.5).astype(np.uint8)


def capture(radiance: LitBlock, block: PressedBlock, rig: Rig, shot: Shot, size: tuple[int, int]) -> bytes:
    """One JPEG capture of the lit canvas ``radiance`` (from ``light_block``)."""
    image, radius2 = _view(radiance, block, rig, shot, size)
    pixels = _process(_sense(_expose(image, radius2, rig, shot), rig, shot), rig)
    data = _jpeg(pixels, shot.jpeg_quality, shot.full_chroma)
    if shot.recompress_quality:
        with Image.open(io.BytesIO(data)) as decoded:
            data = _jpeg(np.asarray(decoded.convert("RGB")), shot.recompress_quality, False)
    return data


@lru_cache(maxsize=8)
def _metering_weights(height: int, width: int) -> FloatArray:
    ys = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height - 0.5
    xs = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width - 0.5
    weights = np.exp(-(xs**2 + ys**2) / (2 * 0.25**2))
    return weights / weights.sum()


def _jpeg(pixels: np.ndarray, quality: int, full_chroma: bool) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(
        buffer, format="JPEG", quality=quality, subsampling=0 if full_chroma else 2
    )
    return buffer.getvalue()
