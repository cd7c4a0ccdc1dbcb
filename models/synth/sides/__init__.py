"""Synthetic side views of Euro pallets: the input of block detection at a camera station.

A side view shows a pallet's long side with its three blocks, rendered with the same block identities as the
crop families (``models.synth.families``), over procedural station backgrounds, with load, film, straps,
forks, lighting, blur and JPEG. Truth: each block's quad and box in pixels, left to right.
"""

from models.synth.sides.dataset import ANNOTATIONS_FILE, SideConfig, generate_sides
from models.synth.sides.render import SideBlock, SideView, render_side
from models.synth.sides.scene import BACKGROUNDS, HELD_OUT_BACKGROUND, TRAINING_BACKGROUNDS

__all__ = [
    "ANNOTATIONS_FILE",
    "BACKGROUNDS",
    "HELD_OUT_BACKGROUND",
    "TRAINING_BACKGROUNDS",
    "SideBlock",
    "SideConfig",
    "SideView",
    "generate_sides",
    "render_side",
]
