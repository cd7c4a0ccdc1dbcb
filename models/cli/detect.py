"""``palletreid detect``: find the blocks in side views, write their crops and a picture of the boxes."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="detect the blocks in side-view images and write crops plus a PNG with the boxes drawn",
        description=(
            "Run the block detector on each IMAGE and write to --out: <name>_boxes.png (the image with the "
            "detected boxes, face quads, order and confidence), <name>_block<k>.png (the crops, left to "
            "right, perspective-corrected where the quad allows) and detections.json. With --evaluate DATA, "
            "instead measure precision and recall at IoU 0.5 and 0.75 on an annotated side-view dataset "
            "(`palletreid synth-sides`) and write the report to --out/detection_report.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("images", nargs="*", type=Path, help="side-view images (JPEG, PNG or WebP)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--detector", type=Path, default=None, help="detector file (default: the shipped one)"
    )
    parser.add_argument("--crop-width", type=int, default=280, help="crop width in pixels")
    parser.add_argument("--crop-height", type=int, default=175, help="crop height in pixels")
    parser.add_argument("--margin", type=float, default=0.0, help="crop margin around the face, fraction")
    parser.add_argument(
        "--evaluate", type=Path, default=None, metavar="DATA", help="annotated dataset to score"
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    parser.add_argument(
        "--identify",
        type=Path,
        default=None,
        metavar="CROPS",
        help="with --evaluate: also block rank-1 against the true crops of the same pallets (a `palletreid "
        "synth` dataset with the same seed and pallets; cam_1 is the gallery) for cam_2 crops, side-view "
        "truth quads and detections",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="fingerprint model for --identify (default: the shipped one)",
    )
    parser.add_argument(
        "--impostors",
        type=int,
        default=8,
        help="with --identify: also the geometric stage's figures (pallets in the matched and review bands "
        "from cam_2 crops and from side views, impostor inliers), each query matched with this many other "
        "pallets; 0 skips them",
    )
    parser.add_argument(
        "--receipt-sides",
        type=Path,
        default=None,
        metavar="DATA",
        help="with --identify: side views of the same pallets from another station (`palletreid synth-sides "
        "--station`) stored as their receipts; adds the pallets dispatched from --evaluate's side views "
        "against them to the geometric figures",
    )
    parser.add_argument(
        "--side-scale-width",
        type=int,
        default=0,
        metavar="PX",
        help="with --identify: also match block images at the scale of a side-view block, shrunk to a face "
        "this many pixels wide and back (1280 x 720 side views: median face 105 px), both ways; 0 skips",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--sheet",
        type=Path,
        default=None,
        metavar="PNG",
        help="also write the drawn images as one contact sheet",
    )
    parser.add_argument("--sheet-width", type=int, default=640, help="width of each image on the sheet")
    parser.add_argument("--sheet-colours", type=int, default=0, help="reduce the sheet to this many colours")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from PIL import ImageDraw

    from models.runtime.detector import BlockDetector, DetectorError, crop_blocks
    from models.runtime.images import ImageRejectedError, load_image_file

    if not args.images and args.evaluate is None:
        logger.error("give at least one IMAGE or --evaluate DATA")
        return 2
    if args.impostors < 0:
        logger.error("--impostors must not be negative")
        return 2
    if args.side_scale_width < 0:
        logger.error("--side-scale-width must not be negative")
        return 2
    if (args.receipt_sides is not None or args.side_scale_width) and (
        args.identify is None or args.impostors == 0
    ):
        logger.error("--receipt-sides and --side-scale-width need --identify and --impostors above 0")
        return 2
    try:
        detector = BlockDetector.load(args.detector, num_threads=args.threads)
    except DetectorError as error:
        logger.error("%s", error)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.evaluate is not None:
        from models.training.detector_annotations import read_annotations
        from models.training.detector_metrics import evaluate_detector

        try:
            views = read_annotations(args.evaluate)[: args.limit]
            receipt_views = read_annotations(args.receipt_sides) if args.receipt_sides is not None else []
        except ValueError as error:
            logger.error("%s", error)
            return 2
        report = evaluate_detector(detector, views, total=len(views))
        report["data"] = str(args.evaluate)
        report["detector"] = detector.metadata.model_id
        if args.identify is not None:
            from models.runtime.inference import Embedder
            from models.training.data import read_dataset
            from models.training.detector_metrics import identification_from_sides

            embedder = Embedder.load(args.checkpoint)
            true_crops = read_dataset(args.identify)
            report["identification"] = identification_from_sides(detector, embedder, views, true_crops)
            if args.impostors > 0:
                from models.evaluation.side_views import verification_from_sides
                from models.runtime.voting import GeometryParameters

                decision = embedder.metadata.decision
                geometry = decision.geometry if decision is not None else GeometryParameters()
                report["verification"] = verification_from_sides(
                    detector,
                    views,
                    true_crops,
                    geometry,
                    impostors=args.impostors,
                    receipt_views=receipt_views,
                    side_scale_width=args.side_scale_width,
                )
        path = args.out / "detection_report.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({key: value for key, value in report.items() if key != "groups"}, indent=2))
        logger.info("wrote %s", path)
        return 0
    results = {}
    drawings = []
    for path in args.images:
        try:
            image = load_image_file(path)
        except (ImageRejectedError, OSError) as error:
            logger.error("%s", error)
            return 1
        detections = detector.detect(image)
        crops = crop_blocks(image, detections, size=(args.crop_width, args.crop_height), margin=args.margin)
        drawn = image.copy()
        pen = ImageDraw.Draw(drawn)
        line = max(2, image.width // 400)
        for order, (detection, crop) in enumerate(zip(detections, crops, strict=True)):
            pen.rectangle(detection.box, outline=(255, 40, 40), width=line)
            pen.polygon(list(detection.quad), outline=(40, 255, 40), width=max(1, line // 2))
            pen.text(
                (detection.box[0] + 3, detection.box[1] - 14),
                f"{order} {detection.confidence:.2f}",
                fill=(255, 255, 0),
            )
            crop.save(args.out / f"{path.stem}_block{order}.png")
        drawn.save(args.out / f"{path.stem}_boxes.png")
        drawings.append(drawn)
        results[str(path)] = [detection.to_dict() for detection in detections]
        logger.info("%s: %d blocks", path, len(detections))
    (args.out / "detections.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.sheet is not None:
        _contact_sheet(drawings, args.sheet_width, args.sheet_colours).save(args.sheet, optimize=True)
        logger.info("wrote %s", args.sheet)
    print(args.out)
    return 0


def _contact_sheet(images: list[Image.Image], width: int, colours: int) -> Image.Image:
    """The images scaled to ``width``, two per row."""
    from PIL import Image

    tiles = [image.resize((width, round(image.height * width / image.width))) for image in images]
    height = max(tile.height for tile in tiles)
    columns = min(2, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height), (255, 255, 255))
    for index, tile in enumerate(tiles):
        sheet.paste(tile, ((index % columns) * width, (index // columns) * height))
    if colours:
        return sheet.quantize(colours, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return sheet
