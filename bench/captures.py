"""Real capture images for the benchmark: synthetic pallets rendered by ``models.synth`` as JPEG files."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from models.synth import BLOCKS_PER_PALLET, SynthConfig, render_pallet

FIRST_BENCH_PALLET = 900_000
"""Pallet indices far above any training set, so benchmark pallets are never training identities."""


@dataclass(frozen=True)
class PalletImages:
    """One pallet's six blocks seen by two cameras: ``enrol`` seeds the gallery, ``query`` is dispatched."""

    pallet: str
    enrol: tuple[bytes, ...]
    query: tuple[bytes, ...]


def render_pallets(count: int, *, seed: int) -> list[PalletImages]:
    """Render ``count`` pallets (two cameras, one frame each) as encoded JPEG captures, blocks in order."""
    config = SynthConfig(pallets=count, first_pallet=FIRST_BENCH_PALLET, cameras=2, frames=1, seed=seed)
    pallets = []
    for pallet_index in tqdm(config.pallet_indices, desc="render captures", unit="pallet"):
        captures = render_pallet(config, pallet_index)
        by_camera: dict[str, list[bytes]] = {}
        for capture in sorted(captures, key=lambda c: (c.camera, c.block)):
            by_camera.setdefault(capture.camera, []).append(capture.jpeg)
        enrol, query = (tuple(by_camera[camera]) for camera in ("cam_1", "cam_2"))
        assert len(enrol) == len(query) == BLOCKS_PER_PALLET
        pallets.append(PalletImages(pallet=captures[0].pallet_id, enrol=enrol, query=query))
    return pallets
