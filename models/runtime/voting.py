"""Pallet-level decision from per-block nearest neighbours, verified by one-to-one block pairing.

This is the one implementation of the decision rule: the service applies it to pgvector query results and the
evaluation applies it to distance matrices, so the measured figures are the figures of the service.

Rule, in two stages.

1. *Shortlist.* Each query block looks up its top-k nearest stored block fingerprints (cosine similarity).
   The pallets among them are ranked by neighbour evidence (the sum over query blocks of the block's best
   similarity to that pallet) and the first ``shortlist_size`` go on to verification.
2. *Verification.* Each stored capture of a shortlisted pallet (the blocks fingerprinted at one of its
   receipts or dispatches) is compared with the query as a whole: query blocks are paired one-to-one with the
   capture's blocks so that the summed similarity is largest (:func:`pairing_score`). Positions may be
   permuted freely, but one stored block cannot explain two query blocks, and a block the index did not
   return still counts. The pallet's *score* is the best mean paired similarity over its captures; query
   blocks left without a partner count 0.

A block *votes* for the pallet of its nearest neighbour if that similarity clears ``block_threshold``. A
pallet is *matched* when its votes reach ``min_votes`` and its score reaches ``score_threshold``. Candidates
are ranked by (score, votes, id), so ties resolve deterministically; among the candidates that clear the
thresholds, preferred pallets win first.

Why pairing instead of "each query block's best stored block": against an unrelated pallet the best of six
stored blocks is picked for every query block, which lifts impostor scores most where it hurts, in a small
gallery; and scoring only what the top-k returned counts a genuine block that the index ranked lower as 0.
docs/evaluation.md compares the rules on the same fingerprints.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

PalletKey = TypeVar("PalletKey", bound=Hashable)

DEFAULT_TOP_K = 10
"""Nearest stored blocks looked up per query block."""
DEFAULT_SHORTLIST_SIZE = 10
"""Pallets verified per query: enough that the true pallet is almost always among them (see the CMC)."""
DEFAULT_CAPTURES_PER_PALLET = 3
"""Most recent stored captures (receipts, dispatches) verified per shortlisted pallet."""
FINGERPRINT_NORMALISATION = "l2"
"""What :func:`unit_rows` does to every fingerprint before similarities are taken (the rule's only one)."""


@dataclass(frozen=True, slots=True)
class Neighbour(Generic[PalletKey]):
    """One stored block fingerprint near a query block."""

    pallet: PalletKey
    similarity: float


@dataclass(frozen=True, slots=True)
class VotingThresholds:
    block_threshold: float
    min_votes: int
    score_threshold: float

    def __post_init__(self) -> None:
        if not -1.0 <= self.block_threshold <= 1.0:
            raise ValueError("block_threshold must lie in [-1, 1]")
        if self.min_votes < 1:
            raise ValueError("min_votes must be at least 1")
        if not -1.0 <= self.score_threshold <= 1.0:
            raise ValueError("score_threshold must lie in [-1, 1]")


@dataclass(frozen=True, slots=True)
class BlockVote(Generic[PalletKey]):
    """What one query block said: its nearest pallet (if any neighbour) and the similarity to it."""

    position: int
    pallet: PalletKey | None
    similarity: float | None
    counted: bool


@dataclass(frozen=True, slots=True)
class Candidate(Generic[PalletKey]):
    pallet: PalletKey
    votes: int
    score: float
    preferred: bool


@dataclass(frozen=True, slots=True)
class Decision(Generic[PalletKey]):
    """Outcome of a vote: ``pallet`` is ``None`` when no candidate clears the thresholds."""

    pallet: PalletKey | None
    score: float
    votes: int
    blocks_compared: int
    blocks: list[BlockVote[PalletKey]] = field(default_factory=list)
    candidates: list[Candidate[PalletKey]] = field(default_factory=list)


def shortlist(
    neighbours_per_block: Sequence[Sequence[Neighbour[PalletKey]]], size: int = DEFAULT_SHORTLIST_SIZE
) -> list[PalletKey]:
    """The ``size`` pallets with the most neighbour evidence, strongest first (ties by id)."""
    if size < 1:
        raise ValueError("size must be at least 1")
    evidence: dict[PalletKey, float] = {}
    for neighbours in neighbours_per_block:
        for pallet, similarity in _best_per_pallet(neighbours).items():
            evidence[pallet] = evidence.get(pallet, 0.0) + similarity
    ranked = sorted(evidence.items(), key=lambda item: (-item[1], str(item[0])))
    return [pallet for pallet, _ in ranked[:size]]


def pairing_score(query: npt.ArrayLike, stored: npt.ArrayLike) -> float:
    """Mean similarity of the query blocks under the best one-to-one pairing with the stored blocks.

    Rows are L2-normalised fingerprints (cosine = dot product). Query blocks without a partner (more query
    blocks than stored ones) count 0, so a partial capture cannot outscore a complete one.
    """
    query_rows = np.asarray(query, dtype=np.float64)
    stored_rows = np.asarray(stored, dtype=np.float64)
    if query_rows.ndim != 2 or stored_rows.ndim != 2 or query_rows.shape[1] != stored_rows.shape[1]:
        raise ValueError(f"cannot pair blocks of shapes {query_rows.shape} and {stored_rows.shape}")
    if len(query_rows) == 0:
        raise ValueError("the query has no blocks")
    if len(stored_rows) == 0:
        return 0.0
    similarities = query_rows @ stored_rows.T
    rows, columns = linear_sum_assignment(similarities, maximize=True)
    return float(similarities[rows, columns].sum() / len(query_rows))


def verify(
    query: npt.ArrayLike, captures: Mapping[PalletKey, Sequence[npt.ArrayLike]]
) -> dict[PalletKey, float]:
    """Score of each pallet: its best :func:`pairing_score` over its stored captures (0 without any)."""
    return {
        pallet: max((pairing_score(query, capture) for capture in pallet_captures), default=0.0)
        for pallet, pallet_captures in captures.items()
    }


def decide(
    neighbours_per_block: Sequence[Sequence[Neighbour[PalletKey]]],
    scores: Mapping[PalletKey, float],
    thresholds: VotingThresholds,
    preferred: Collection[PalletKey] = frozenset(),
    max_candidates: int = 5,
) -> Decision[PalletKey]:
    """The pallet decision from per-block neighbours (votes) and verified ``scores`` (see :func:`verify`).

    ``neighbours_per_block[i]`` are the neighbours of the query block at position ``i``, in any order; the
    candidates are the pallets of ``scores`` (the verified shortlist). ``preferred`` pallets (e.g. pallets
    in stock at dispatch) win over the others among candidates that clear the thresholds, and only then.
    """
    votes: dict[PalletKey, int] = {}
    block_votes: list[BlockVote[PalletKey]] = []
    for position, neighbours in enumerate(neighbours_per_block):
        best_per_pallet = _best_per_pallet(neighbours)
        if not best_per_pallet:
            block_votes.append(BlockVote(position=position, pallet=None, similarity=None, counted=False))
            continue
        nearest, nearest_similarity = min(best_per_pallet.items(), key=lambda item: (-item[1], str(item[0])))
        counted = nearest_similarity >= thresholds.block_threshold
        if counted:
            votes[nearest] = votes.get(nearest, 0) + 1
        block_votes.append(
            BlockVote(position=position, pallet=nearest, similarity=nearest_similarity, counted=counted)
        )

    preferred_set = frozenset(preferred)
    candidates = sorted(
        (
            Candidate(
                pallet=pallet, votes=votes.get(pallet, 0), score=score, preferred=pallet in preferred_set
            )
            for pallet, score in scores.items()
        ),
        key=_strength,
    )
    accepted = [
        c for c in candidates if c.votes >= thresholds.min_votes and c.score >= thresholds.score_threshold
    ]
    winner = min(accepted, key=lambda c: (not c.preferred, *_strength(c))) if accepted else None
    reported = winner or (candidates[0] if candidates else None)
    return Decision(
        pallet=winner.pallet if winner else None,
        score=reported.score if reported else 0.0,
        votes=reported.votes if reported else 0,
        blocks_compared=len(neighbours_per_block),
        blocks=block_votes,
        candidates=candidates[:max_candidates],
    )


def unit_rows(matrix: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Rows scaled to unit length (float64), the form :func:`pairing_score` expects."""
    rows = np.asarray(matrix, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _best_per_pallet(neighbours: Sequence[Neighbour[PalletKey]]) -> dict[PalletKey, float]:
    best: dict[PalletKey, float] = {}
    for neighbour in neighbours:
        previous = best.get(neighbour.pallet)
        if previous is None or neighbour.similarity > previous:
            best[neighbour.pallet] = neighbour.similarity
    return best


def _strength(candidate: Candidate[PalletKey]) -> tuple[float, int, str]:
    return (-candidate.score, -candidate.votes, str(candidate.pallet))
