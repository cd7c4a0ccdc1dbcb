"""Pallets identified from side views by the geometric stage, against the same pallets from block crops.

Block rank-1 (``models.training.detector_metrics.identification_from_sides``) says whether the network finds
a side-view block; whether the *pallet* is matched is decided by the geometric stage's bands (inliers summed
over its blocks). This module measures that stage on annotated side views and the block crops of the same
pallets, both ways: block crops of two cameras (features with ``geometry.extractor``), and the blocks the
detector finds in the side views, cut out and JPEG-encoded as the service does (``used_detections``,
``crop_blocks``, ``encode_crop``), their features extracted with ``geometry.side_view_extractor`` as the
service does and, for comparison, like block images.

With ``side_scale_width``, block images are also matched at the scale of a side-view block: shrunk to a face
that many pixels wide and enlarged back before their features are extracted like a side-view block's
(``models.runtime.voting.side_scale_features``), both ways, as the service does
(``GeometryParameters.side_scale_width``): corners found at one scale on both sides match more often than a
sharp crop's and a blurred face's.

Given the side views of the same pallets from a second camera station (``receipt_views``: the
``--station`` of ``palletreid synth-sides``), it also measures a pallet received and dispatched from side
views, the deployment where no station cuts crops.

Genuine sums pair each query block with its true stored block; impostor sums pair a query with another
pallet's capture block to block so that the inliers are as large as they can be (assignment over the 6 x 6
inlier matrix), a conservative stand-in for the network's pairing. The matched share uses the band's sum
and confirmed-blocks conditions; the margin over the runner-up is not modelled.
"""

from __future__ import annotations

import io
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from models.evaluation.verified import distribution
from models.runtime.detector import (
    BlockDetector,
    box_iou,
    crop_blocks,
    encode_crop,
    used_detections,
)
from models.runtime.images import load_image_file
from models.runtime.local_features import ExtractorSettings, LocalFeatures, count_inliers, extract
from models.runtime.voting import GeometryParameters, side_scale_features
from models.training.data import BlockImageRecord
from models.training.detector_annotations import AnnotatedView

MIN_IOU = 0.5
"""A detection stands for the true block it overlaps at least this much (else it is left out)."""

QueryBlocks = dict[int, LocalFeatures]
"""Features of a query's blocks by true position."""


@dataclass(frozen=True)
class _Pallet:
    family: str
    gallery: QueryBlocks
    true_crops: QueryBlocks
    gallery_at_side_scale: QueryBlocks
    true_crops_at_side_scale: QueryBlocks
    side_crops: dict[int, Image.Image]
    receipt_side_crops: dict[int, Image.Image]


def verification_from_sides(
    detector: BlockDetector,
    views: Sequence[AnnotatedView],
    crops: Sequence[BlockImageRecord],
    geometry: GeometryParameters,
    *,
    gallery_camera: str = "cam_1",
    query_camera: str = "cam_2",
    impostors: int = 8,
    seed: int = 0,
    receipt_views: Sequence[AnnotatedView] = (),
    side_scale_width: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Matched and review shares of known pallets and impostor sums, per kind of query and per family.

    Kinds (query against gallery): ``true_crops`` (``query_camera`` crops against ``gallery_camera`` crops);
    ``side_views`` (side-view blocks with ``geometry.side_view_extractor``, as the service extracts them)
    against the crops, and ``side_views_as_blocks`` (extracted like block images) for comparison;
    ``true_crops_against_side_views`` (the reverse: a pallet received from side views, dispatched as crops)
    and ``..._as_blocks``; with ``receipt_views``, ``side_views_against_side_views`` (``views`` against
    ``receipt_views``, both extracted as the service does; only pallets with blocks found in both are kept);
    with ``side_scale_width``, ``side_views_against_crops_at_side_scale`` and
    ``crops_at_side_scale_against_side_views``. ``impostors`` other pallets (drawn with ``seed``) are
    matched with each query.
    """
    if side_scale_width < 0:
        raise ValueError("side_scale_width must not be negative")
    pallets = _read_pallets(
        detector,
        views,
        receipt_views,
        crops,
        geometry,
        (gallery_camera, query_camera),
        side_scale_width,
        progress,
    )
    if len(pallets) < 2:
        raise ValueError("side-view verification needs at least two pallets with side views and crops")
    crop_queries = {name: pallet.true_crops for name, pallet in pallets.items()}
    crop_gallery = {name: pallet.gallery for name, pallet in pallets.items()}
    sides_as_blocks = _side_features(pallets, geometry.extractor)
    sides = _side_features(pallets, geometry.side_view_extractor)
    kinds = {  # query, gallery
        "true_crops": (crop_queries, crop_gallery),
        "side_views_as_blocks": (sides_as_blocks, crop_gallery),
        "side_views": (sides, crop_gallery),
        "true_crops_against_side_views_as_blocks": (crop_queries, sides_as_blocks),
        "true_crops_against_side_views": (crop_queries, sides),
    }
    if receipt_views:
        receipts = {
            name: _features(pallet.receipt_side_crops, geometry.side_view_extractor)
            for name, pallet in pallets.items()
        }
        kinds["side_views_against_side_views"] = (sides, receipts)
    if side_scale_width:
        gallery_at_side_scale = {name: pallet.gallery_at_side_scale for name, pallet in pallets.items()}
        crops_at_side_scale = {name: pallet.true_crops_at_side_scale for name, pallet in pallets.items()}
        kinds["side_views_against_crops_at_side_scale"] = (sides, gallery_at_side_scale)
        kinds["crops_at_side_scale_against_side_views"] = (crops_at_side_scale, sides)
    names = sorted(pallets)
    draw = random.Random(seed)
    opponents = {
        name: draw.sample([other for other in names if other != name], min(impostors, len(names) - 1))
        for name in names
    }
    report: dict[str, Any] = {
        "pallets": len(names),
        "impostors_per_query": min(impostors, len(names) - 1),
        "bands": {
            "match_inliers": geometry.match_inliers,
            "match_blocks": geometry.match_blocks,
            "block_inliers": geometry.block_inliers,
            "review_inliers": geometry.review_inliers,
        },
        "receipt_side_views": bool(receipt_views),
        "side_scale_width": side_scale_width,
        "extractors": {
            "stored": geometry.extractor.max_features,
            "side_view_queries": geometry.side_view_extractor.max_features,
        },
    }
    for kind, (queries, gallery) in kinds.items():
        genuine: dict[str, tuple[int, ...]] = {}
        impostor: dict[str, list[int]] = {}
        for name in tqdm(names, unit="pallet", desc=kind, disable=not progress):
            query, stored = queries[name], gallery[name]
            genuine[name] = tuple(
                count_inliers(query[position], stored[position], geometry.matcher)
                for position in sorted(query)
                if position in stored
            )
            impostor[name] = [
                _best_pairing_inliers(query, gallery[other], geometry) for other in opponents[name]
            ]
        families = sorted({pallet.family for pallet in pallets.values()})
        report[kind] = {
            **_figures(names, genuine, impostor, geometry),
            "by_family": {
                family: _figures(
                    [name for name in names if pallets[name].family == family], genuine, impostor, geometry
                )
                for family in families
            },
        }
    return report


def _read_pallets(
    detector: BlockDetector,
    views: Sequence[AnnotatedView],
    receipt_views: Sequence[AnnotatedView],
    crops: Sequence[BlockImageRecord],
    geometry: GeometryParameters,
    cameras: tuple[str, str],
    side_scale_width: int,
    progress: bool,
) -> dict[str, _Pallet]:
    """Pallets with crops of both ``cameras`` (gallery, query) and side-view blocks found by the detector (in
    both sets)."""
    features: dict[tuple[str, str, bool], QueryBlocks] = defaultdict(dict)
    families: dict[str, str] = {}
    for record in tqdm(crops, unit="crop", desc="crops", disable=not progress):
        if record.camera in cameras and record.position is not None:
            image = load_image_file(record.path)
            features[record.pallet, record.camera, False][record.position] = extract(
                image, geometry.extractor
            )
            if side_scale_width:
                features[record.pallet, record.camera, True][record.position] = side_scale_features(
                    image, replace(geometry, side_scale_width=side_scale_width)
                )
            families[record.pallet] = record.attributes.get("family", "unknown")
    side_crops = _detected_blocks(detector, views, "detect", progress)
    receipt_crops = _detected_blocks(detector, receipt_views, "detect receipts", progress)
    gallery_camera, query_camera = cameras
    return {
        name: _Pallet(
            family=families[name],
            gallery=features[name, gallery_camera, False],
            true_crops=features[name, query_camera, False],
            gallery_at_side_scale=features[name, gallery_camera, True],
            true_crops_at_side_scale=features[name, query_camera, True],
            side_crops=side_crops[name],
            receipt_side_crops=receipt_crops[name],
        )
        for name in families
        if features[name, gallery_camera, False]
        and features[name, query_camera, False]
        and side_crops.get(name)
        and (receipt_crops.get(name) or not receipt_views)
    }


def _detected_blocks(
    detector: BlockDetector, views: Sequence[AnnotatedView], desc: str, progress: bool
) -> defaultdict[str, dict[int, Image.Image]]:
    """Per pallet, the blocks the detector finds in its side views, cut and encoded as the service does.

    Keyed by the true position of the annotated block a detection overlaps (detections overlapping none are
    left out).
    """
    found_blocks: defaultdict[str, dict[int, Image.Image]] = defaultdict(dict)
    for view in tqdm(views, unit="image", desc=desc, disable=not progress):
        image = load_image_file(view.path)
        found = used_detections(detector.detect(image))
        for detection, crop in zip(found, crop_blocks(image, found), strict=True):
            truth = max(view.blocks, key=lambda block: box_iou(detection.box, block.box), default=None)
            if truth is not None and box_iou(detection.box, truth.box) >= MIN_IOU:
                found_blocks[view.pallet_id][truth.position] = Image.open(io.BytesIO(encode_crop(crop)))
    return found_blocks


def _side_features(pallets: Mapping[str, _Pallet], extractor: ExtractorSettings) -> dict[str, QueryBlocks]:
    return {name: _features(pallet.side_crops, extractor) for name, pallet in pallets.items()}


def _features(blocks: Mapping[int, Image.Image], extractor: ExtractorSettings) -> QueryBlocks:
    return {position: extract(crop, extractor) for position, crop in blocks.items()}


def _best_pairing_inliers(query: QueryBlocks, stored: QueryBlocks, geometry: GeometryParameters) -> int:
    """Inliers summed over the one-to-one block pairing that makes them largest."""
    matrix = np.array(
        [
            [count_inliers(query[block], stored[other], geometry.matcher) for other in sorted(stored)]
            for block in sorted(query)
        ]
    )
    rows, columns = linear_sum_assignment(-matrix)
    return int(matrix[rows, columns].sum())


def _figures(
    names: Sequence[str],
    genuine: Mapping[str, tuple[int, ...]],
    impostor: Mapping[str, Sequence[int]],
    geometry: GeometryParameters,
) -> dict[str, Any]:
    sums = [sum(genuine[name]) for name in names]
    matched = [
        sum(genuine[name]) >= geometry.match_inliers
        and sum(count >= geometry.block_inliers for count in genuine[name]) >= geometry.match_blocks
        for name in names
    ]
    review = [not hit and total >= geometry.review_inliers for hit, total in zip(matched, sums, strict=True)]
    impostor_sums = [value for name in names for value in impostor[name]]
    return {
        "pallets": len(names),
        "matched": sum(matched) / len(names) if names else float("nan"),
        "review": sum(review) / len(names) if names else float("nan"),
        "genuine_inliers": distribution(sums),
        "impostor_inliers": distribution(impostor_sums),
        "impostors_in_review_band": sum(value >= geometry.review_inliers for value in impostor_sums),
        "impostors_in_match_band": sum(value >= geometry.match_inliers for value in impostor_sums),
    }
