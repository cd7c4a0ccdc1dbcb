"""Noise fields of the flakepress family: Gaussian noise shaped in the frequency domain (power law)."""

from __future__ import annotations

import numpy as np
from PIL import Image

FloatArray = np.ndarray


def power_law_noise(
    rng: np.random.Generator, shape: tuple[int, int], slope: float, *, coarse: int = 1, stretch: float = 1.0
) -> FloatArray:
    """Unit-std noise whose power falls as ``frequency ** -slope`` (2: cloudy, 0: white).

    Computed on a grid ``coarse`` times smaller and enlarged bilinearly (low-frequency fields need no full
    resolution); ``stretch`` > 1 elongates the structures along x (streaks).
    """
    height, width = shape
    small = (max(4, -(-height // coarse)), max(4, -(-width // coarse)))
    white = rng.standard_normal(small)
    freq_y = np.fft.fftfreq(small[0])[:, None]
    freq_x = np.fft.rfftfreq(small[1])[None, :] * stretch
    radius = np.sqrt(freq_x**2 + freq_y**2)
    radius[0, 0] = np.inf  # no mean
    field = np.fft.irfft2(np.fft.rfft2(white) * radius ** (-slope / 2), s=small).astype(np.float32)
    field = (field - field.mean()) / (field.std() + 1e-6)
    if coarse == 1:
        return field
    image = Image.fromarray(field, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)
