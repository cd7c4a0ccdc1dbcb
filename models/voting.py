"""Pallet-level decision from per-block nearest neighbours.

This is the one implementation of the decision rule: the service applies it to pgvector query results and the
evaluation applies it to distance matrices, so the measured figures are the figures of the service.

Rule. Each query block looks up its top-k nearest stored block fingerprints (cosine similarity). For every
pallet seen among a block's neighbours, the block's similarity to that pallet is the best similarity among
that pallet's blocks (so block positions may be permuted freely). A block *votes* for the pallet it is most
similar to, if that similarity clears ``block_threshold``. A pallet's *score* is the mean, over all compared
query blocks, of the block's similarity to that pallet (0 where the pallet is not among the block's
neighbours).
A pallet is *matched* when its votes reach ``min_votes`` and its score reaches ``score_threshold``.
Candidates are ranked by (votes, score, id), so ties resolve deterministically; among the candidates that
clear the thresholds, preferred pallets win first.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

PalletKey = TypeVar("PalletKey", bound=Hashable)


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


def _strength(candidate: Candidate[PalletKey]) -> tuple[int, float, str]:
    return (-candidate.votes, -candidate.score, str(candidate.pallet))


def decide(
    neighbours_per_block: Sequence[Sequence[Neighbour[PalletKey]]],
    thresholds: VotingThresholds,
    preferred: Collection[PalletKey] = frozenset(),
    max_candidates: int = 5,
) -> Decision[PalletKey]:
    """Aggregate per-block neighbours into one pallet decision.

    ``neighbours_per_block[i]`` are the neighbours of the query block at position ``i``, in any order.
    ``preferred`` pallets (e.g. pallets in stock at dispatch) win over the others among candidates that
    clear the thresholds, and only then.
    """
    blocks_compared = len(neighbours_per_block)
    similarity_sums: dict[PalletKey, float] = {}
    votes: dict[PalletKey, int] = {}
    block_votes: list[BlockVote[PalletKey]] = []

    for position, neighbours in enumerate(neighbours_per_block):
        best_per_pallet: dict[PalletKey, float] = {}
        for neighbour in neighbours:
            previous = best_per_pallet.get(neighbour.pallet)
            if previous is None or neighbour.similarity > previous:
                best_per_pallet[neighbour.pallet] = neighbour.similarity
        for pallet, similarity in best_per_pallet.items():
            similarity_sums[pallet] = similarity_sums.get(pallet, 0.0) + similarity
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
                pallet=pallet,
                votes=votes.get(pallet, 0),
                score=total / blocks_compared,
                preferred=pallet in preferred_set,
            )
            for pallet, total in similarity_sums.items()
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
        blocks_compared=blocks_compared,
        blocks=block_votes,
        candidates=candidates[:max_candidates],
    )
