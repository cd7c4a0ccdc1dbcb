"""Long-term change of a flakepress block: what months of circulation do to a pressed face.

Different in kind from the chipsplat ageing: dirt settles into the recesses between flakes and is splashed
up from the floor, forks abrade the high flakes along their sliding direction (flattened, paler), the sun
greys the wood, moisture leaves tide-marked stains, edges and corners break, new nails are driven and
pulled. All of it is drawn from the block's own ageing stream, so the aged block is the same every time.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from models.synth.families.flakepress.board import PressedBlock
from models.synth.families.flakepress.marks import (
    blob_outline,
    draw_patch,
    edge_chip,
    nail_hole,
    outline_bounds,
    polygon_painter,
)
from models.synth.families.flakepress.noise import power_law_noise

FloatArray = np.ndarray


def _face_slices(block: PressedBlock, pad: int) -> tuple[slice, slice]:
    x0, y0, x1, y1 = block.face
    rows, cols = block.height.shape
    return slice(max(0, int(y0) - pad), min(rows, int(y1) + pad)), slice(
        max(0, int(x0) - pad), min(cols, int(x1) + pad)
    )


def weather(block: PressedBlock, rng: np.random.Generator) -> PressedBlock:
    """The aged block (a new object; ``block`` is left as it is)."""
    albedo, height, gloss = block.albedo.copy(), block.height.copy(), block.gloss.copy()
    rows, cols = _face_slices(block, 6)
    face_albedo, face_height = albedo[rows, cols], height[rows, cols]
    shape = face_height.shape
    x0, y0, x1, y1 = block.face
    local_box = (x0 - cols.start, y0 - rows.start, x1 - cols.start, y1 - rows.start)

    # the sun greys the wood, patchily
    greying = rng.uniform(0.1, 0.45) * np.clip(
        0.75 + 0.3 * power_law_noise(rng, shape, 2.5, coarse=8), 0.0, 1.0
    )
    silver = face_albedo.mean(axis=2, keepdims=True) * np.array([0.97, 1.0, 1.04], np.float32) * 1.08
    face_albedo += (silver - face_albedo) * greying[..., None]

    # dirt: settles into recesses, more towards the floor, in patches
    surround = ndimage.uniform_filter(face_height, size=7, mode="nearest")
    recess = np.clip((surround - face_height) / 0.6, 0.0, 1.0)
    towards_floor = np.clip(
        (np.arange(shape[0], dtype=np.float32)[:, None] - local_box[1]) / (y1 - y0), 0.0, 1.0
    )
    patches = np.clip(0.5 + 0.5 * power_law_noise(rng, shape, 2.2, coarse=4), 0.0, 1.0)
    dirt = np.clip(
        rng.uniform(0.3, 0.7) * recess + rng.uniform(0.1, 0.5) * towards_floor**2 * patches, 0.0, 0.9
    )
    dirt *= rng.uniform(0.6, 1.0)
    soil = np.array([0.16, 0.14, 0.12], np.float32) * rng.uniform(0.7, 1.3)
    face_albedo += (soil - face_albedo) * dirt[..., None]
    face_height += dirt * 0.4  # dirt fills the gaps: a smoother relief

    # abrasion along the forks' sliding direction: high flakes flattened and paler
    streaks = power_law_noise(rng, shape, 1.6, stretch=rng.uniform(5.0, 10.0))
    if rng.random() < 0.3:  # slanted rather than horizontal
        streaks = ndimage.rotate(streaks, rng.uniform(-20, 20), reshape=False, order=1, mode="reflect")
    worn = np.clip((streaks - rng.uniform(0.6, 1.3)) * 1.5, 0.0, 1.0)
    high = np.clip((face_height - surround) / 0.4 + 0.5, 0.0, 1.0)
    face_height -= worn * high * 0.5
    face_albedo *= 1.0 + (worn * high * rng.uniform(0.25, 0.5))[..., None] * np.array(
        [1.0, 0.93, 0.78], np.float32
    )

    # moisture stains with a darker tide mark at the rim
    for _ in range(int(rng.integers(0, 3))):
        radius = rng.uniform(0.08, 0.25) * (y1 - y0)
        centre = (rng.uniform(local_box[0], local_box[2]), rng.uniform(local_box[1], local_box[3]))
        outline = blob_outline(centre, (radius * rng.uniform(1.0, 1.7), radius), rng.uniform(0, math.pi), rng)
        patch = draw_patch(shape, outline_bounds(outline), polygon_painter(outline), blur=1.2)
        soft = ndimage.uniform_filter(patch.alpha, size=int(radius * 0.3) | 1)
        rim = np.clip(patch.alpha - soft, 0.0, 1.0) * 3.0 + np.clip(soft - patch.alpha, 0.0, 1.0) * 1.5
        view = face_albedo[patch.rows, patch.cols]
        tide = np.clip(rim, 0.0, 1.0)[..., None] * rng.uniform(0.2, 0.4)
        view *= (1.0 - rng.uniform(0.05, 0.15) * patch.alpha)[..., None]
        view *= 1.0 - tide * np.array([0.9, 1.0, 1.15], np.float32)

    # broken edges and corners, new nail holes (fresh: pale)
    for _ in range(int(rng.integers(1, 4))):
        edge_chip(face_albedo, face_height, rng, local_box, fresh=rng.random() < 0.7)
    for _ in range(int(rng.poisson(0.8))):
        nail_hole(face_albedo, face_height, rng, local_box, splinters=True)

    np.clip(albedo, 0.0, 1.0, out=albedo)
    return PressedBlock(albedo, height, gloss, block.face, block.material)
