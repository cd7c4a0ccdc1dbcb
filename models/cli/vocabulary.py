"""``palletreid vocabulary``: learn the visual-word vocabulary of a checkpoint from training captures."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.runtime.visual_words import VisualVocabulary

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "vocabulary",
        help="learn the visual-word vocabulary (ORB bag of words) and store it in a checkpoint",
        description=(
            "Extract ORB local features (with the checkpoint's extractor settings) from the block "
            "images of a dataset, cluster them into a two-level tree of visual words and store the "
            "vocabulary in the checkpoint beside the weights (the model id does not change). The service "
            "then also finds candidates by shared visual words. Learn it from training captures only, "
            "never from the captures you evaluate on. Run `palletreid reindex` on a deployment after "
            "changing it."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="dataset root (metadata.csv or folders) to learn from")
    source.add_argument(
        "--copy-from",
        type=Path,
        metavar="CHECKPOINT",
        help="copy the vocabulary stored in another checkpoint instead of learning one (visual words depend "
        "on the local features alone, not on the network: a retrained network keeps its vocabulary)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="checkpoint .safetensors (default: the shipped one)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write the checkpoint with its vocabulary here instead of updating --checkpoint in place",
    )
    parser.add_argument(
        "--max-images", type=int, default=6000, help="images sampled from the dataset (default 6000)"
    )
    parser.add_argument("--branches", type=int, default=128, help="top-level clusters (default 128)")
    parser.add_argument("--leaves", type=int, default=256, help="words below each top cluster (default 256)")
    parser.add_argument(
        "--descriptors-per-image",
        type=int,
        default=250,
        help="descriptors sampled per image for clustering (default 250)",
    )
    parser.add_argument("--iterations", type=int, default=10, help="k-majority iterations (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and clustering seed (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="feature extraction threads (default 2)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from tqdm import tqdm

    from models.runtime.checkpoint import (
        DEFAULT_CHECKPOINT,
        CheckpointError,
        load_vocabulary,
        read_metadata,
    )
    from models.runtime.images import load_image_file
    from models.runtime.local_features import extract
    from models.runtime.voting import GeometryParameters
    from models.training.data import read_dataset
    from models.training.vocabulary import VocabularyConfig, learn_vocabulary

    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    try:
        config = VocabularyConfig(
            branches=args.branches,
            leaves=args.leaves,
            descriptors_per_image=args.descriptors_per_image,
            iterations=args.iterations,
            seed=args.seed,
        )
        metadata = read_metadata(checkpoint)
    except (ValueError, CheckpointError) as error:
        logger.error("%s", error)
        return 2
    if args.copy_from is not None:
        try:
            copied = load_vocabulary(args.copy_from)
        except CheckpointError as error:
            logger.error("%s", error)
            return 2
        if copied is None:
            logger.error("%s holds no vocabulary to copy", args.copy_from)
            return 2
        return _store(checkpoint, args.output, copied)
    geometry = metadata.decision.geometry if metadata.decision is not None else GeometryParameters()
    paths = sorted({str(record.path) for record in read_dataset(args.data)})
    if len(paths) > args.max_images > 0:
        chosen = np.random.default_rng(args.seed).choice(len(paths), args.max_images, replace=False)
        paths = [paths[index] for index in sorted(chosen)]
    logger.info("extracting local features of %d images of %s", len(paths), args.data)

    def descriptors(path: str) -> np.ndarray:
        return extract(load_image_file(Path(path)), geometry.extractor).descriptors

    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        sets = list(tqdm(pool.map(descriptors, paths), total=len(paths), desc="features", unit="image"))
    try:
        vocabulary = learn_vocabulary(sets, config)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    used = np.count_nonzero(vocabulary.idf < np.log(len(sets) + 1))
    logger.info(
        "vocabulary %s: %d words, %d seen in the training images",
        vocabulary.vocabulary_id,
        vocabulary.size,
        used,
    )
    return _store(checkpoint, args.output, vocabulary)


def _store(checkpoint: Path, output: Path | None, vocabulary: VisualVocabulary) -> int:
    """Write ``vocabulary`` into ``checkpoint`` (or a copy of it at ``output``) and print its id."""
    from models.runtime.checkpoint import store_vocabulary

    target = checkpoint
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint, output)
        target = output
    stored = store_vocabulary(target, vocabulary)
    logger.info("stored vocabulary %s in %s (%s)", vocabulary.vocabulary_id, target, stored.model_id)
    print(vocabulary.vocabulary_id)
    return 0
