"""Visual words: a block's ORB descriptors quantised into a sparse, searchable vector.

The network's shortlist is the weak point on captures from a source it never saw: leave-one-family-out at
1,000 pallets the true pallet was among the network's 10 checked candidates for 87.5 % of known dispatches.
Local features do not share the network's blind spot, but matching them is too slow for a whole gallery.
Instance retrieval's answer is a bag of visual words: each descriptor is replaced by the nearest word of a
fixed vocabulary, a block becomes a sparse tf-idf vector, and the cosine of two such vectors counts the
distinctive descriptors they share. Those vectors live in pgvector (``sparsevec``, HNSW), so a dispatch finds
the blocks that share the most words with its own in the whole gallery, and the pallets they belong to are
checked geometrically as well as the network's candidates.

The vocabulary is a two-level tree of binary centroids (``branches`` x ``leaves`` words): a descriptor goes to
the nearest of the top centroids, then to the nearest leaf below it, so quantising a block of 500 descriptors
costs a few milliseconds on a CPU for any vocabulary size. Term weights are ``sqrt(tf) * idf`` (the square
root damps bursts of one repeated structure, such as the stamp's strokes), rows scaled to unit length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from models.runtime.local_features import DESCRIPTOR_BYTES, LocalFeatures

DESCRIPTOR_BITS = DESCRIPTOR_BYTES * 8
MAX_WORDS_PER_BLOCK = 1000
"""pgvector indexes sparse vectors of at most 1,000 non-zero elements; a block never has more words."""


@dataclass(frozen=True, slots=True, eq=False)
class SparseWords:
    """A block's word vector: sorted word ``indices`` with their weights, unit length (all zero if empty)."""

    indices: npt.NDArray[np.int32]
    values: npt.NDArray[np.float32]
    dimensions: int

    def __post_init__(self) -> None:
        if self.indices.shape != self.values.shape or self.indices.ndim != 1:
            raise ValueError("indices and values must be 1-d arrays of one length")
        if len(self.indices) > MAX_WORDS_PER_BLOCK:
            raise ValueError(f"{len(self.indices)} words exceed the {MAX_WORDS_PER_BLOCK} pgvector indexes")
        if len(self.indices) and (
            self.indices[0] < 0 or self.indices[-1] >= self.dimensions or np.any(np.diff(self.indices) <= 0)
        ):
            raise ValueError("indices must be strictly increasing and lie in [0, dimensions)")

    def __len__(self) -> int:
        return len(self.indices)

    def dense(self) -> npt.NDArray[np.float32]:
        vector = np.zeros(self.dimensions, np.float32)
        vector[self.indices] = self.values
        return vector


@dataclass(frozen=True, eq=False)
class VisualVocabulary:
    """Binary centroids of a two-level word tree and the inverse document frequency of every word.

    ``top`` is (branches, 32) packed bits, ``leaves`` (branches, leaves, 32), ``idf`` (branches x leaves,);
    word ``b * leaves + l`` is leaf ``l`` below top centroid ``b``.
    """

    top: npt.NDArray[np.uint8]
    leaves: npt.NDArray[np.uint8]
    idf: npt.NDArray[np.float32]
    _top_signs: npt.NDArray[np.float32] = field(init=False, repr=False)
    _leaf_signs: npt.NDArray[np.float32] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        branches = len(self.top)
        if self.top.dtype != np.uint8 or self.top.shape != (branches, DESCRIPTOR_BYTES) or branches < 1:
            raise ValueError(f"top centroids must be uint8 (branches, {DESCRIPTOR_BYTES})")
        if self.leaves.dtype != np.uint8 or self.leaves.ndim != 3 or self.leaves.shape[0] != branches:
            raise ValueError(f"leaf centroids must be uint8 ({branches}, leaves, {DESCRIPTOR_BYTES})")
        if self.leaves.shape[2] != DESCRIPTOR_BYTES or self.leaves.shape[1] < 1:
            raise ValueError(f"leaf centroids must be uint8 ({branches}, leaves, {DESCRIPTOR_BYTES})")
        if self.idf.shape != (self.size,) or not np.all(np.isfinite(self.idf)) or np.any(self.idf < 0):
            raise ValueError(f"idf must hold one finite, non-negative weight per word ({self.size})")
        # unpacked once: quantising is then two small matrix products per block
        object.__setattr__(self, "_top_signs", np.ascontiguousarray(signed_bits(self.top).T))
        leaf_signs = signed_bits(self.leaves).transpose(0, 2, 1)
        object.__setattr__(self, "_leaf_signs", np.ascontiguousarray(leaf_signs))

    @property
    def size(self) -> int:
        """Number of words: the dimensions of a block's word vector."""
        return int(self.leaves.shape[0] * self.leaves.shape[1])

    @property
    def vocabulary_id(self) -> str:
        """``words<size>-<digest>``: names the exact vocabulary stored word vectors were computed with."""
        digest = hashlib.sha256()
        for array in (self.top, self.leaves, self.idf.astype("<f4")):
            digest.update(np.ascontiguousarray(array).tobytes())
        return f"words{self.size}-{digest.hexdigest()[:12]}"

    def words(self, descriptors: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
        """The word of every descriptor (uint8 (n, 32) ORB descriptors)."""
        if descriptors.dtype != np.uint8 or descriptors.ndim != 2 or descriptors.shape[1] != DESCRIPTOR_BYTES:
            raise ValueError(f"descriptors must be uint8 (n, {DESCRIPTOR_BYTES})")
        if len(descriptors) == 0:
            return np.zeros(0, np.int64)
        signs = signed_bits(descriptors)
        branch = np.argmax(signs @ self._top_signs, axis=1)
        leaf_count = self.leaves.shape[1]
        words = np.empty(len(descriptors), np.int64)
        for top in np.unique(branch):
            members = np.flatnonzero(branch == top)
            leaf = np.argmax(signs[members] @ self._leaf_signs[top], axis=1)
            words[members] = top * leaf_count + leaf
        return words

    def encode(self, features: LocalFeatures) -> SparseWords:
        """The block's unit-length ``sqrt(tf) * idf`` word vector."""
        indices, counts = np.unique(self.words(features.descriptors), return_counts=True)
        values = np.sqrt(counts) * self.idf[indices]
        kept = values > 0
        indices, values = indices[kept], values[kept]
        norm = float(np.linalg.norm(values))
        return SparseWords(
            indices=indices.astype(np.int32),
            values=(values / norm if norm > 0 else values).astype(np.float32),
            dimensions=self.size,
        )

    def tensors(self) -> dict[str, npt.NDArray[np.generic]]:
        """Arrays as stored in a checkpoint (see :meth:`from_tensors`)."""
        return {
            "visual_words.top": self.top,
            "visual_words.leaves": self.leaves,
            "visual_words.idf": self.idf,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, npt.NDArray[np.generic]]) -> VisualVocabulary | None:
        """The vocabulary in a checkpoint's tensors, ``None`` when it carries none."""
        if "visual_words.top" not in tensors:
            return None
        return cls(
            top=np.asarray(tensors["visual_words.top"], dtype=np.uint8),
            leaves=np.asarray(tensors["visual_words.leaves"], dtype=np.uint8),
            idf=np.asarray(tensors["visual_words.idf"], dtype=np.float32),
        )


def signed_bits(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Packed bits as +-1 floats: for two such rows, Hamming distance = (256 - dot product) / 2."""
    return np.unpackbits(packed, axis=-1).astype(np.float32) * 2.0 - 1.0


def word_similarities(
    query: Sequence[SparseWords | None], stored: Sequence[SparseWords | None]
) -> npt.NDArray[np.float64]:
    """Cosine similarity of every query block's words with every stored block's (0 where one has none)."""
    similarities = np.zeros((len(query), len(stored)), np.float64)
    present = [words for words in (*query, *stored) if words is not None and len(words)]
    if not present:
        return similarities
    if len({words.dimensions for words in present}) > 1:
        raise ValueError("word vectors of different vocabularies cannot be compared")
    dense = np.zeros((len(query), present[0].dimensions), np.float64)
    for row, words in enumerate(query):
        if words is not None:
            dense[row, words.indices] = words.values
    for column, words in enumerate(stored):
        if words is not None and len(words):
            similarities[:, column] = dense[:, words.indices] @ words.values.astype(np.float64)
    return similarities
