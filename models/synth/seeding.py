"""Independent, reproducible random streams shared by every family."""

from __future__ import annotations

import numpy as np


def derive_rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent random stream for (seed, keys): the same keys always give the same numbers.

    Streams of different purposes (block, ageing, camera, frame) and of different families differ in their
    keys, so no stream ever depends on how many numbers another one drew.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy=seed, spawn_key=keys)))
