"""Learning a visual-word vocabulary (:class:`~models.runtime.visual_words.VisualVocabulary`) from ORB.

Binary descriptors are clustered with k-majority (k-means whose centroid is the bitwise majority of its
members, distance = Hamming), first into ``branches`` top clusters, then each cluster into ``leaves`` words.
Inverse document frequencies are counted over the training images (an image is a document).

Learn it from training captures only: the leave-one-family-out figures use a vocabulary learned without the
evaluated family, like the network.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from models.runtime.local_features import DESCRIPTOR_BYTES
from models.runtime.visual_words import VisualVocabulary, signed_bits

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VocabularyConfig:
    branches: int = 128
    leaves: int = 256
    descriptors_per_image: int = 250
    """Descriptors sampled per training image for clustering (all of them count for the idf)."""
    iterations: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.branches, self.leaves, self.descriptors_per_image, self.iterations) < 1:
            raise ValueError("branches, leaves, descriptors_per_image and iterations must be at least 1")


def learn_vocabulary(
    descriptor_sets: Sequence[npt.NDArray[np.uint8]], config: VocabularyConfig = VocabularyConfig()
) -> VisualVocabulary:
    """The vocabulary of ``descriptor_sets`` (one uint8 (n, 32) array of ORB descriptors per image)."""
    rng = np.random.default_rng(config.seed)
    images = [d for d in descriptor_sets if len(d)]
    if not images:
        raise ValueError("no descriptors to learn a vocabulary from")
    sample = np.concatenate(
        [d[rng.choice(len(d), min(len(d), config.descriptors_per_image), replace=False)] for d in images]
    )
    if len(sample) < config.branches:
        raise ValueError(f"{len(sample)} descriptors cannot make {config.branches} top clusters")
    logger.info(
        "learning %d x %d visual words from %d descriptors of %d images",
        config.branches,
        config.leaves,
        len(sample),
        len(images),
    )
    top, branch = k_majority(sample, config.branches, config.iterations, rng)
    leaves = np.empty((config.branches, config.leaves, DESCRIPTOR_BYTES), np.uint8)
    for index in tqdm(range(config.branches), desc="vocabulary", unit="branch"):
        members = sample[branch == index]
        if len(members) == 0:
            members = top[index : index + 1]
        if len(members) <= config.leaves:
            # too few descriptors to cluster: each is its own word; the padding repeats the first, which the
            # nearest-leaf search never prefers over it (ties go to the lowest index)
            chosen = members
        else:
            chosen, _ = k_majority(members, config.leaves, config.iterations, rng)
        leaves[index, : len(chosen)] = chosen
        leaves[index, len(chosen) :] = chosen[0]
    uniform = np.ones(config.branches * config.leaves, np.float32)
    vocabulary = VisualVocabulary(top=top, leaves=leaves, idf=uniform)
    documents = np.zeros(vocabulary.size, np.int64)
    for descriptors in tqdm(images, desc="idf", unit="image"):
        documents[np.unique(vocabulary.words(descriptors))] += 1
    idf = np.log((len(images) + 1) / (documents + 1)).astype(np.float32)
    return VisualVocabulary(top=top, leaves=leaves, idf=idf)


def k_majority(
    descriptors: npt.NDArray[np.uint8], clusters: int, iterations: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Binary centroids (packed, (clusters, 32)) and the cluster of every descriptor.

    Starts from distinct random descriptors; an emptied cluster restarts from the descriptor farthest from
    its centroid, so every centroid ends up describing real descriptors.
    """
    signs = signed_bits(descriptors)
    centroids = signs[rng.choice(len(signs), clusters, replace=False)]
    assignment = np.zeros(len(signs), np.int64)
    for _ in range(iterations):
        scores = signs @ centroids.T
        assignment = np.argmax(scores, axis=1)
        counts = np.bincount(assignment, minlength=clusters)
        order = np.argsort(assignment, kind="stable")
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        sums = np.zeros_like(centroids)
        filled = counts > 0
        sums[filled] = np.add.reduceat(signs[order], starts[filled], axis=0)
        farthest = np.argsort(scores[np.arange(len(signs)), assignment])
        refill = iter(farthest)
        for cluster in range(clusters):
            if counts[cluster] == 0:
                sums[cluster] = signs[next(refill)]
        centroids = np.where(sums >= 0, 1.0, -1.0).astype(np.float32)
    assignment = np.argmax(signs @ centroids.T, axis=1)
    packed = np.packbits((centroids > 0).astype(np.uint8), axis=1)
    return packed, assignment
