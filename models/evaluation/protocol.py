"""The pallet-level open-set protocol: which captures form the receipt gallery, which the dispatch queries."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.evaluation.open_set import PalletGallery, PalletQuery
from models.training.data import BlockImageRecord, split_query_gallery

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenSetProtocol:
    """Gallery and queries of the pallet-level open-set evaluation."""

    gallery: PalletGallery
    queries: list[PalletQuery]
    known_pallets: list[str]
    unknown_pallets: list[str]
    gallery_cameras: list[str]
    query_cameras: list[str]


def split_unknown_pallets(pallets: Sequence[str], unknown_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic known / unknown split: the last ``round(fraction * n)`` pallets (sorted) are unknown.

    At least one pallet stays known.
    """
    if not 0.0 <= unknown_fraction < 1.0:
        raise ValueError("unknown_fraction must lie in [0, 1)")
    ordered = sorted(set(pallets))
    num_unknown = min(round(unknown_fraction * len(ordered)), len(ordered) - 1)
    cut = len(ordered) - num_unknown
    return ordered[:cut], ordered[cut:]


def build_open_set(
    captures: Sequence[BlockImageRecord],
    embeddings: npt.NDArray[np.float32],
    gallery_cameras: Sequence[str],
    *,
    unknown_fraction: float,
    seed: int = 0,
    query_where: Mapping[str, str] | None = None,
    gallery_where: Mapping[str, str] | None = None,
) -> OpenSetProtocol:
    """Receipt gallery and dispatch queries from a dataset with pallet / block structure.

    A *capture event* is all block captures of one pallet with the same camera and frame. Gallery: the first
    event (by frame) of every known pallet on a gallery camera. Queries: every event of every pallet (known
    and unknown) on the other cameras, with the block order shuffled. Unknown pallets have no gallery entry.
    ``query_where`` / ``gallery_where`` keep only query / gallery events whose captures carry these attribute
    values (e.g. ``aged=1``).
    """
    events: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for index, capture in enumerate(captures):
        events[(capture.pallet, capture.camera, capture.frame)].append(index)
    known, unknown = split_unknown_pallets([c.pallet for c in captures], unknown_fraction)
    known_set = set(known)
    gallery_set = set(gallery_cameras)

    gallery_rows: list[int] = []
    gallery_pallets: list[str] = []
    registered: set[str] = set()
    for (pallet, camera, _frame), rows in sorted(events.items()):
        if (
            pallet in known_set
            and camera in gallery_set
            and pallet not in registered
            and all(matches_attributes(captures[row], gallery_where) for row in rows)
        ):
            registered.add(pallet)
            gallery_rows.extend(rows)
            gallery_pallets.extend([pallet] * len(rows))
    missing = sorted(known_set - registered)
    if missing:
        logger.warning(
            "%d known pallets have no gallery capture and are left out: %s", len(missing), missing[:5]
        )
    known = [p for p in known if p in registered]

    rng = np.random.default_rng(seed)
    queries: list[PalletQuery] = []
    query_cameras: set[str] = set()
    for (pallet, camera, _frame), rows in sorted(events.items()):
        if camera in gallery_set or (pallet in known_set and pallet not in registered):
            continue
        if not all(matches_attributes(captures[row], query_where) for row in rows):
            continue
        query_cameras.add(camera)
        shuffled = np.asarray(rows)[rng.permutation(len(rows))]
        queries.append(
            PalletQuery(
                pallet=pallet,
                known=pallet in registered,
                embeddings=embeddings[shuffled],
                captures=tuple(int(row) for row in shuffled),
            )
        )
    return OpenSetProtocol(
        gallery=PalletGallery(
            embeddings=embeddings[gallery_rows].astype(np.float64),
            pallets=tuple(gallery_pallets),
            captures=tuple(gallery_rows),
        ),
        queries=queries,
        known_pallets=known,
        unknown_pallets=unknown,
        gallery_cameras=sorted(gallery_set),
        query_cameras=sorted(query_cameras),
    )


def matches_attributes(capture: BlockImageRecord, required: Mapping[str, str] | None) -> bool:
    """Whether the capture's metadata attributes carry every required value (no requirement: always)."""
    return not required or all(capture.attributes.get(key) == value for key, value in required.items())


def query_gallery_indices(captures: Sequence[BlockImageRecord]) -> tuple[list[int], list[int]]:
    position = {id(c): i for i, c in enumerate(captures)}
    query, gallery = split_query_gallery(list(captures))
    return [position[id(c)] for c in query], [position[id(c)] for c in gallery]
