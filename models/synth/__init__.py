"""Deterministic synthetic captures of Euro-pallet blocks (the only training data the network sees).

Captures come from independent *families* (``models.synth.families``), each with its own wood model,
ageing, capture pipeline and rendering of the shared distractors, behind one interface
(``models.synth.family.SynthFamily``) and a registry by name (``models.synth.registry``). ``dataset``
writes whole datasets of any families in the ``metadata.csv`` layout that ``models.data.read_dataset`` reads.
Train on some families and evaluate on another to measure how a model transfers to a world it never saw.
"""

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
from models.synth.family import BlockKey, SynthFamily
from models.synth.registry import (
    ALL,
    DEFAULT_FAMILY,
    FAMILIES,
    family_styles,
    get_family,
    parse_families,
    parse_styles,
)

__all__ = [
    "ALL",
    "BLOCKS_PER_PALLET",
    "DEFAULT_FAMILY",
    "FAMILIES",
    "METADATA_COLUMNS",
    "BlockKey",
    "SynthCapture",
    "SynthConfig",
    "SynthFamily",
    "family_styles",
    "generate_dataset",
    "get_family",
    "iter_captures",
    "pallet_id",
    "parse_families",
    "parse_styles",
    "render_pallet",
]
