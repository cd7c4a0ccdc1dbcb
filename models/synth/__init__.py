"""Deterministic synthetic captures of Euro-pallet blocks (the only training data the network sees).

Identity lives in each block's base texture (``texture``); everything a station varies is drawn per capture
(``capture``) from named station styles (``styles``); ``dataset`` writes whole datasets in the
``metadata.csv`` layout that ``models.data.read_dataset`` reads.
"""

from models.synth.capture import CameraSetup, FrameConditions, render_capture, render_capture_array
from models.synth.dataset import (
    BLOCKS_PER_PALLET,
    METADATA_COLUMNS,
    SynthCapture,
    SynthConfig,
    generate_dataset,
    iter_captures,
    pallet_id,
    render_pallet,
)
from models.synth.styles import DEFAULT_STYLES, STYLES, StationStyle, parse_styles
from models.synth.texture import BlockTexture, age_block, render_block

__all__ = [
    "BLOCKS_PER_PALLET",
    "DEFAULT_STYLES",
    "METADATA_COLUMNS",
    "STYLES",
    "BlockTexture",
    "CameraSetup",
    "FrameConditions",
    "StationStyle",
    "SynthCapture",
    "SynthConfig",
    "age_block",
    "generate_dataset",
    "iter_captures",
    "pallet_id",
    "parse_styles",
    "render_block",
    "render_capture",
    "render_capture_array",
    "render_pallet",
]
