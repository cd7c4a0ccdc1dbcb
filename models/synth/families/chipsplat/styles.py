"""Capture-station styles: families of lighting, colour and camera geometry.

A style describes the *distribution* a station draws its capture conditions from. Each style is a distinct
family (different light source, camera mounting and processing) so an evaluation can hold one style out of
training and measure how well the fingerprint transfers to a station it has never seen.
"""

from __future__ import annotations

from dataclasses import dataclass

Range = tuple[float, float]


@dataclass(frozen=True, slots=True)
class StationStyle:
    """Ranges of capture conditions; each capture draws uniformly inside them.

    Camera-level values (zoom, tilt, exposure, white balance) are drawn once per pallet and camera, because a
    station's camera is fixed while the pallet moves; frame-level jitter is drawn again for every frame.
    """

    name: str
    description: str
    # geometry (camera level)
    zoom: Range  # crop width relative to the block face width: < 1 zooms in, > 1 shows the surroundings
    tilt: Range  # keystone strength (fraction of crop size), sign drawn at random
    rotation_deg: Range  # absolute rotation, sign drawn at random
    # geometry (frame level): block-detection jitter
    shift: float  # max centre shift, fraction of the crop size
    zoom_jitter: float  # max relative zoom change between frames
    corner_jitter: float  # max independent corner displacement, fraction of crop size
    # light and colour (camera level)
    exposure: Range
    white_balance: tuple[float, float, float]  # mean channel gains (R, G, B)
    white_balance_jitter: float
    light_gradient: Range  # brightness change across the frame from a directional light
    vignette: Range
    # processing and optics (frame level)
    exposure_jitter: float
    gamma: Range
    contrast: Range
    saturation: Range
    focus_blur: Range  # Gaussian radius in output pixels
    motion_blur: Range  # length in output pixels
    motion_probability: float
    read_noise: Range  # std of signal-independent noise, fraction of full scale
    shot_noise: Range  # std scale of signal-dependent noise
    jpeg_quality: tuple[int, int]


STYLES: dict[str, StationStyle] = {
    style.name: style
    for style in (
        StationStyle(
            name="warehouse",
            description="dim warm indoor light, low contrast, slight noise: the reference gate cameras",
            zoom=(0.74, 1.06),
            tilt=(0.0, 0.05),
            rotation_deg=(0.0, 2.0),
            shift=0.04,
            zoom_jitter=0.03,
            corner_jitter=0.01,
            exposure=(0.42, 0.7),
            white_balance=(1.03, 1.0, 0.92),
            white_balance_jitter=0.05,
            light_gradient=(0.05, 0.3),
            vignette=(0.05, 0.25),
            exposure_jitter=0.06,
            gamma=(0.9, 1.12),
            contrast=(0.8, 1.0),
            saturation=(0.75, 1.05),
            focus_blur=(0.2, 0.8),
            motion_blur=(0.0, 1.5),
            motion_probability=0.2,
            read_noise=(0.004, 0.012),
            shot_noise=(0.005, 0.02),
            jpeg_quality=(70, 92),
        ),
        StationStyle(
            name="daylight",
            description="bright neutral-to-cool daylight at an outdoor dock, hard shadows, crisp optics",
            zoom=(0.8, 1.12),
            tilt=(0.0, 0.07),
            rotation_deg=(0.0, 3.0),
            shift=0.05,
            zoom_jitter=0.04,
            corner_jitter=0.012,
            exposure=(0.7, 1.15),
            white_balance=(0.94, 1.0, 1.1),
            white_balance_jitter=0.06,
            light_gradient=(0.2, 0.6),
            vignette=(0.0, 0.12),
            exposure_jitter=0.1,
            gamma=(0.8, 1.05),
            contrast=(0.95, 1.25),
            saturation=(0.9, 1.25),
            focus_blur=(0.0, 0.5),
            motion_blur=(0.0, 1.0),
            motion_probability=0.1,
            read_noise=(0.002, 0.006),
            shot_noise=(0.002, 0.01),
            jpeg_quality=(80, 96),
        ),
        StationStyle(
            name="flash",
            description="dark hall, on-camera flash: hot centre, strong vignette, grainy, low JPEG quality",
            zoom=(0.7, 1.0),
            tilt=(0.0, 0.04),
            rotation_deg=(0.0, 2.5),
            shift=0.05,
            zoom_jitter=0.03,
            corner_jitter=0.01,
            exposure=(0.7, 1.15),
            white_balance=(1.0, 1.0, 1.02),
            white_balance_jitter=0.04,
            light_gradient=(0.0, 0.15),
            vignette=(0.3, 0.6),
            exposure_jitter=0.12,
            gamma=(1.0, 1.3),
            contrast=(0.95, 1.25),
            saturation=(0.55, 0.9),
            focus_blur=(0.3, 1.0),
            motion_blur=(0.0, 1.0),
            motion_probability=0.1,
            read_noise=(0.01, 0.03),
            shot_noise=(0.01, 0.035),
            jpeg_quality=(45, 78),
        ),
        StationStyle(
            name="conveyor",
            description="moving conveyor under fluorescent tubes: motion blur, loose crops, oblique views",
            zoom=(0.78, 1.15),
            tilt=(0.03, 0.1),
            rotation_deg=(0.0, 4.5),
            shift=0.08,
            zoom_jitter=0.06,
            corner_jitter=0.02,
            exposure=(0.5, 0.9),
            white_balance=(0.93, 1.06, 0.95),
            white_balance_jitter=0.05,
            light_gradient=(0.1, 0.4),
            vignette=(0.05, 0.3),
            exposure_jitter=0.08,
            gamma=(0.9, 1.15),
            contrast=(0.85, 1.15),
            saturation=(0.7, 1.0),
            focus_blur=(0.2, 0.9),
            motion_blur=(1.0, 4.0),
            motion_probability=0.8,
            read_noise=(0.004, 0.015),
            shot_noise=(0.005, 0.02),
            jpeg_quality=(60, 88),
        ),
    )
}

DEFAULT_STYLES: tuple[str, ...] = tuple(STYLES)


def parse_styles(text: str | None) -> tuple[str, ...]:
    """Parse a comma-separated style list (``None`` or empty: all styles) and reject unknown names."""
    if not text:
        return DEFAULT_STYLES
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in STYLES]
    if unknown or not names:
        raise ValueError(f"unknown style(s) {unknown or text!r}; choose from {', '.join(STYLES)}")
    return names
