"""Pallet-level decision: network shortlist and block pairing, then geometric verification, decided in bands.

This is the one implementation of the decision rule: the service applies it to pgvector query results and the
evaluation applies it to distance matrices, so the measured figures are the figures of the service.

Rule, in three stages.

1. *Shortlist.* Each query block looks up its top-k nearest stored block fingerprints (cosine similarity).
   The pallets among them are ranked by neighbour evidence (the sum over query blocks of the block's best
   similarity to that pallet) and the first ``shortlist_size`` go on to verification.
2. *Pairing.* Each stored capture of a shortlisted pallet (the blocks fingerprinted at one of its
   receipts or dispatches) is compared with the query as a whole: query blocks are paired one-to-one with the
   capture's blocks so that the summed similarity is largest (:func:`pair_blocks`). Positions may be
   permuted freely, but one stored block cannot explain two query blocks, and a block the index did not
   return still counts. The pallet's *score* is the best mean paired similarity over its captures; query
   blocks left without a partner count 0.
3. *Geometric verification* (:func:`decide_verified`). The best few candidates by score have each paired
   block matched with local features (:mod:`models.runtime.local_features`, stored at recording time): the
   number of matches consistent with one homography. A block image meets a block cut out of a side view at
   the side view's scale (:class:`CaptureFeatures`). Cosine similarities drift with the capture source
   (camera, light, wood); inlier counts hardly do, so the decision is taken on them, in three bands:

   - **matched**: the strongest candidate has at least ``match_inliers`` inliers summed over its paired
     blocks, at least ``match_blocks`` blocks with ``block_inliers`` or more, and ``min_margin`` inliers more
     than the best other checked candidate;
   - **review**: not matched, but the strongest candidate has ``review_inliers`` or more (or, when asked
     for, the network's thresholds matched a pallet): registered as new and flagged with the candidates;
   - **new**: nothing of the above.

   The runner-up's evidence is kept with every decision: under "a pallet matches one pallet at most" it is
   an impostor score, the live sample the service watches its false-match rate with.

Network-only decisions (:func:`decide`): a block *votes* for the pallet of its nearest neighbour if that
similarity clears ``block_threshold``; a pallet is *matched* when its votes reach ``min_votes`` and its score
reaches ``score_threshold``. Candidates are ranked by (score, votes, id), so ties resolve deterministically;
among the candidates that clear the thresholds, preferred pallets win first.

Why pairing instead of "each query block's best stored block": against an unrelated pallet the best of six
stored blocks is picked for every query block, which lifts impostor scores most where it hurts, in a small
gallery; and scoring only what the top-k returned counts a genuine block that the index ranked lower as 0.
docs/evaluation.md compares the rules on the same fingerprints.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy.optimize import linear_sum_assignment

from models.runtime.local_features import (
    ExtractorSettings,
    LocalFeatures,
    MatcherSettings,
    at_side_view_scale,
    count_inliers,
    extract,
)
from models.runtime.visual_words import SparseWords, word_similarities

PalletKey = TypeVar("PalletKey", bound=Hashable)

DEFAULT_TOP_K = 50
"""Nearest stored blocks looked up per query block. Wide, because on captures from a source the network never
saw the true block is often not among the first ten (leave-one-family-out, 1,000 pallets: block rank-10 47 %);
the pallets behind a wide neighbour list still point at the true pallet (docs/model-card.md)."""
DEFAULT_SHORTLIST_SIZE = 30
"""Pallets paired block-to-block per query; the geometric stage checks the best of them by pairing score."""
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


@dataclass(frozen=True, slots=True)
class BlockPairing:
    """The one-to-one pairing of query blocks with a stored capture's blocks that maximises similarity."""

    score: float
    """Mean paired similarity over the query blocks (unpaired ones count 0): :func:`pairing_score`."""
    pairs: tuple[tuple[int, int], ...]
    """(query block position, stored block position), by query position."""


def pair_blocks(query: npt.ArrayLike, stored: npt.ArrayLike) -> BlockPairing:
    """Pair the query blocks one-to-one with the stored blocks so that the summed similarity is largest.

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
        return BlockPairing(score=0.0, pairs=())
    return pair_by_similarity(query_rows @ stored_rows.T)


def pair_by_similarity(similarities: npt.NDArray[np.float64]) -> BlockPairing:
    """One-to-one pairing of query blocks (rows) with stored blocks (columns) of largest summed similarity."""
    if similarities.shape[0] == 0:
        raise ValueError("the query has no blocks")
    if similarities.shape[1] == 0:
        return BlockPairing(score=0.0, pairs=())
    rows, columns = linear_sum_assignment(similarities, maximize=True)
    return BlockPairing(
        score=float(similarities[rows, columns].sum() / similarities.shape[0]),
        pairs=tuple((int(row), int(column)) for row, column in zip(rows, columns, strict=True)),
    )


def pairing_score(query: npt.ArrayLike, stored: npt.ArrayLike) -> float:
    """Mean similarity of the query blocks under the best one-to-one pairing with the stored blocks."""
    return pair_blocks(query, stored).score


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


class Outcome(StrEnum):
    """The three bands of a verified decision."""

    MATCHED = "matched"
    """Clearly the same pallet, and clearly ahead of every other checked pallet."""
    REVIEW = "review"
    """Uncertain: registered as a new pallet, flagged for a person with the candidates."""
    NEW = "new"
    """Clearly a pallet never seen."""


MIN_SIDE_SCALE_WIDTH = 16
"""A narrower face keeps too little texture for ORB's corners at the working size."""


@dataclass(frozen=True)
class GeometryParameters:
    """Settings and thresholds of the geometric stage; inlier counts do not move with the capture source.

    JSON-serialisable (plain fields and nested dataclasses), so they travel in the checkpoint header.
    Defaults from both synthetic families, aged dispatch against receipt, 140 pallets: per-block impostor
    inliers at most 41, impostor sums at most 107 even under the inlier-maximising pairing (94 pairing
    block i with block i); genuine sums at least 138.
    """

    candidates_checked: int = 10
    """Best candidates by pairing score whose paired blocks are matched (the first two always, the rest
    only while no candidate is clearly matched). The network's order is not always right, least of all on a
    source it never saw: leave-one-family-out at 1,000 pallets, checking 10 instead of 5 lifted known pallets
    identified from 81.8 to 87.3 % (new) and 75.6 to 85.0 % (aged), 20 only to 89.3 % (new) while flagging
    twice as many unknown pallets for review; an unknown dispatch then costs about 20 CPU-ms more."""
    captures_checked: int = 1
    """Stored captures of a candidate checked, those with the best pairing score first."""
    block_inliers: int = 25
    """A paired block with at least this many inliers is *confirmed*."""
    match_inliers: int = 130
    """Matched needs at least this many inliers summed over the paired blocks ..."""
    match_blocks: int = 2
    """... and at least this many confirmed blocks (evidence from more than one block) ..."""
    min_margin: int = 50
    """... and this many inliers more than the best other checked candidate."""
    review_inliers: int = 80
    """Below this sum the query is new, unless the network stage matched it."""
    word_top_k: int = 20
    """Blocks sharing the most visual words looked up per query block (when the model has a vocabulary)."""
    word_shortlist_size: int = 30
    """Pallets ranked by visual-word evidence whose latest capture is paired block to block by words."""
    word_candidates_checked: int = 5
    """Best of those by word pairing checked geometrically after the network's candidates (pallets not
    checked yet), while no candidate is clearly matched: the true pallet when the network's shortlist lost it.
    0 turns the visual-word stage off."""
    review_when_network_matches: bool = False
    """Also flag a query the network's thresholds matched. Off: those thresholds move with the source (on an
    unseen source they matched nearly every unknown pallet), so they would flood the review queue there."""
    extractor: ExtractorSettings = field(default_factory=ExtractorSettings)
    """How every stored block's features are extracted, and a block-image query's."""
    side_view_extractor: ExtractorSettings = field(
        default_factory=lambda: ExtractorSettings(max_features=1000)
    )
    """How the features of blocks cut out of side views are extracted, to be matched and stored (block
    images: ``extractor``). Such a crop is a block face of about 110 px upsampled to the working size; its
    corners sit at coarser scales than a block camera's, so keeping more of them finds more of the corners
    the other capture shares. 150 rendered pallets of both families (``palletreid detect --evaluate
    --identify``, most favourable pairing for impostors, 1,200 pairs each): side views against block crops
    in the matched band 75.3 -> 81.3 % with 1,000 corners instead of 500, impostor sums at most 67 -> 88;
    block crops against side-view captures 75.3 -> 78.7 %, impostors at most 70 -> 67; side views against
    side-view captures (probe, aged renders against new ones) impostor sums at most 78: all far below the
    match band of 130. 1,500 or 2,000 corners: 82.7 %, impostors up to 109 / 111. A looser ratio test
    (0.85) matched as many but lifted impostors more; bicubic crops added about 1 point (not taken: they
    change the images the network learnt side views from); sharpened crops or a smaller working size matched
    fewer. Same working size as ``extractor``: the points are compared in those pixels."""
    side_scale_width: int = 112
    """Block images are also matched against blocks cut out of side views (either way round) at a side-view
    block's scale: shrunk to a face this many pixels wide, enlarged back and extracted with
    ``side_view_extractor`` (:func:`side_scale_features`; stored beside their own features). 0: block images
    are matched against side-view blocks with their own features. 1280 x 720 side views show faces of 68-158
    pixels (p5-p95, median 105). 150 rendered pallets of both families, 1,200 impostor pairs each way
    (``palletreid detect --evaluate --identify --side-scale-width 112``): side views against block images in
    the matched band 81.3 -> 89.3 %, block images against side-view captures 78.7 -> 91.3 %; impostor sums at
    most 88 -> 97 and 66 -> 92 (16 and 6 pairs in the review band, none in the match band). 140 pixels:
    87.3 % (side views against block images)."""
    matcher: MatcherSettings = field(default_factory=MatcherSettings)

    def __post_init__(self) -> None:
        if self.candidates_checked < 1 or self.captures_checked < 1:
            raise ValueError("candidates_checked and captures_checked must be at least 1")
        if self.word_top_k < 1 or self.word_shortlist_size < 1 or self.word_candidates_checked < 0:
            raise ValueError("word_top_k, word_shortlist_size must be >= 1, word_candidates_checked >= 0")
        if min(self.block_inliers, self.match_blocks, self.min_margin, self.review_inliers) < 0:
            raise ValueError("inlier thresholds, match_blocks and min_margin must not be negative")
        if self.review_inliers > self.match_inliers:
            raise ValueError("review_inliers must not exceed match_inliers")
        if self.side_view_extractor.working_long_side != self.extractor.working_long_side:
            raise ValueError("side_view_extractor must use the working size of extractor")
        if not (self.side_scale_width == 0 or self.side_scale_width >= MIN_SIDE_SCALE_WIDTH):
            raise ValueError(f"side_scale_width must be 0 (off) or at least {MIN_SIDE_SCALE_WIDTH}")


def side_scale_features(image: Image.Image, geometry: GeometryParameters) -> LocalFeatures:
    """A block image's local features at a side-view block's scale (``geometry.side_scale_width``, not 0)."""
    if geometry.side_scale_width == 0:
        raise ValueError("side_scale_width is 0: block images are not matched at a side-view scale")
    return extract(at_side_view_scale(image, geometry.side_scale_width), geometry.side_view_extractor)


@dataclass(frozen=True, slots=True)
class CaptureFeatures:
    """The local features of one capture's blocks (stored or a query), in block order, and how they were made.

    A capture is either block images (``features`` with ``GeometryParameters.extractor``, and maybe
    ``at_side_scale``: :func:`side_scale_features`) or blocks cut out of side views (``from_side_views``;
    ``features`` with ``side_view_extractor``). :meth:`compared_with` picks which of them meet.
    """

    features: Sequence[LocalFeatures | None]
    from_side_views: bool = False
    at_side_scale: Sequence[LocalFeatures | None] | None = None
    """Block images only: the same blocks at a side-view block's scale; ``None`` when not extracted."""

    def __post_init__(self) -> None:
        if self.at_side_scale is not None and (
            self.from_side_views or len(self.at_side_scale) != len(self.features)
        ):
            raise ValueError("at_side_scale holds one entry per block, and only for block images")

    def compared_with(
        self, stored: CaptureFeatures
    ) -> tuple[Sequence[LocalFeatures | None], Sequence[LocalFeatures | None]]:
        """(this capture's features, ``stored``'s features) to match: their own features when both come from
        the same kind of capture; the block images' side-scale features (block by block where they have them)
        against a side view's blocks."""
        if self.from_side_views == stored.from_side_views:
            return self.features, stored.features
        if self.from_side_views:
            return self.features, stored.against_side_views()
        return self.against_side_views(), stored.features

    def against_side_views(self) -> Sequence[LocalFeatures | None]:
        """The features to match with a side view's blocks: at side-view scale where a block has them."""
        if self.at_side_scale is None:
            return self.features
        return [
            own if scaled is None else scaled
            for own, scaled in zip(self.features, self.at_side_scale, strict=True)
        ]


FeaturesLoader = Callable[[PalletKey, int], CaptureFeatures]
"""``(pallet, capture index) -> local features of that capture's blocks`` in stored block order (``None``
where a block has none). Called only for the captures the rule checks, so a caller can fetch them lazily."""


@dataclass(frozen=True, slots=True)
class WordCandidate(Generic[PalletKey]):
    """A pallet found by visual words, with its stored capture paired to the query by word similarity."""

    pallet: PalletKey
    capture: int
    """Index of the paired capture, as the features loader counts the pallet's captures."""
    pairing: BlockPairing


def rank_word_candidates(
    query_words: Sequence[SparseWords | None],
    stored_words: Mapping[PalletKey, Sequence[tuple[int, Sequence[SparseWords | None]]]],
) -> list[WordCandidate[PalletKey]]:
    """Pair the query with every given capture by word similarity; each pallet's best, strongest first.

    ``stored_words[pallet]`` lists ``(capture index, block word vectors in stored order)``. Ranking by the
    one-to-one pairing instead of by the raw neighbour evidence keeps one block that shares many words with
    several query blocks from carrying a pallet (measured leave-one-family-out: the true pallet in the top 5
    for 91.7 % of known dispatches against 89.0 %).
    """
    # one similarity matrix against every stored block: the query's words are spread out once, not per capture
    columns = [block for captures in stored_words.values() for _, words in captures for block in words]
    similarities = word_similarities(query_words, columns)
    ranked: list[WordCandidate[PalletKey]] = []
    first = 0
    for pallet, captures in stored_words.items():
        best: WordCandidate[PalletKey] | None = None
        for capture, words in captures:
            first += len(words)
            if not words:
                continue
            pairing = pair_by_similarity(similarities[:, first - len(words) : first])
            if best is None or pairing.score > best.pairing.score:
                best = WordCandidate(pallet=pallet, capture=capture, pairing=pairing)
        if best is not None:
            ranked.append(best)
    ranked.sort(key=lambda candidate: (-candidate.pairing.score, str(candidate.pallet)))
    return ranked


@dataclass(frozen=True, slots=True)
class GeometricEvidence(Generic[PalletKey]):
    """Inliers of the paired blocks of one candidate's best checked capture."""

    pallet: PalletKey
    pairing_score: float
    capture: int
    """Index of the checked capture in the pallet's captures."""
    pairs: tuple[tuple[int, int], ...]
    """(query block position, stored block position) as the network paired them."""
    block_inliers: tuple[int, ...]
    """Inliers of each pair, in the order of ``pairs``."""
    confirmed_blocks: int
    """Pairs with at least :attr:`GeometryParameters.block_inliers` inliers."""

    @property
    def inliers(self) -> int:
        """Total inliers over the paired blocks: the evidence the bands are set on."""
        return sum(self.block_inliers)


@dataclass(frozen=True, slots=True)
class VerifiedDecision(Generic[PalletKey]):
    """A decision in bands, with the evidence behind it."""

    outcome: Outcome
    pallet: PalletKey | None
    """The matched pallet; ``None`` unless the outcome is :attr:`Outcome.MATCHED`."""
    checked: list[GeometricEvidence[PalletKey]]
    """Every geometrically checked candidate, strongest first (the review candidates)."""
    runner_up: GeometricEvidence[PalletKey] | None
    """The strongest checked candidate after the first: an impostor whether or not the query is known
    (a pallet matches one pallet at most), so its inliers sample the live impostor distribution."""
    network: Decision[PalletKey]
    """The network stage's decision (votes, pairing scores) under the calibrated thresholds."""

    @property
    def review(self) -> bool:
        return self.outcome is Outcome.REVIEW


def decide_verified(
    neighbours_per_block: Sequence[Sequence[Neighbour[PalletKey]]],
    query_fingerprints: npt.ArrayLike,
    query_features: CaptureFeatures,
    captures: Mapping[PalletKey, Sequence[npt.ArrayLike]],
    load_features: FeaturesLoader[PalletKey],
    thresholds: VotingThresholds,
    geometry: GeometryParameters,
    preferred: Collection[PalletKey] = frozenset(),
    executor: Executor | None = None,
    word_candidates: Callable[[], Sequence[WordCandidate[PalletKey]]] | None = None,
) -> VerifiedDecision[PalletKey]:
    """The banded decision: network shortlist and pairing, then geometric verification of the best candidates.

    ``captures`` are the stored captures (fingerprint rows) of the shortlisted pallets (see
    :func:`shortlist`), as for :func:`verify`;
    ``query_features.features[i]`` are the local features of query block ``i`` (every block has them),
    matched with a capture's as :meth:`CaptureFeatures.compared_with` says.
    Candidates are checked in order of pairing score: each one's best captures
    (by pairing score) have their network-paired blocks matched, and the capture with the most inliers is
    the candidate's evidence. ``executor`` runs the block matches of a capture in parallel (OpenCV
    releases the GIL). ``word_candidates`` gives the visual-word candidates (:func:`rank_word_candidates`,
    strongest first); it is called only when the network's candidates leave no clear match (the word search
    costs a query that the network's candidates settle nothing), and up to
    ``geometry.word_candidates_checked`` of its pallets not checked yet are checked next.
    """
    query_rows = unit_rows(query_fingerprints)
    if len(query_features.features) != len(query_rows) or any(
        block is None for block in query_features.features
    ):
        raise ValueError(f"{len(query_rows)} query blocks need as many feature sets")
    pairings = {
        pallet: sorted(
            ((pair_blocks(query_rows, capture), index) for index, capture in enumerate(stored)),
            key=lambda item: -item[0].score,
        )
        for pallet, stored in captures.items()
    }
    scores = {pallet: ranked[0][0].score if ranked else 0.0 for pallet, ranked in pairings.items()}
    network = decide(neighbours_per_block, scores, thresholds, preferred)
    order = sorted((p for p in pairings if pairings[p]), key=lambda p: (-scores[p], str(p)))
    checked: list[GeometricEvidence[PalletKey]] = []
    for pallet in order[: geometry.candidates_checked]:
        evidence = [
            _capture_evidence(pallet, pairing, index, query_features, load_features, geometry, executor)
            for pairing, index in pairings[pallet][: geometry.captures_checked]
        ]
        checked.append(min(evidence, key=_evidence_order))
        checked.sort(key=_evidence_order)
        if len(checked) >= 2 and _clear_match(checked, geometry):
            break
    wanted = geometry.word_candidates_checked > 0 and word_candidates is not None
    if wanted and not (len(checked) >= 2 and _clear_match(checked, geometry)):
        assert word_candidates is not None
        seen = {evidence.pallet for evidence in checked}
        fresh = [candidate for candidate in word_candidates() if candidate.pallet not in seen]
        for candidate in fresh[: geometry.word_candidates_checked]:
            checked.append(
                _capture_evidence(
                    candidate.pallet,
                    candidate.pairing,
                    candidate.capture,
                    query_features,
                    load_features,
                    geometry,
                    executor,
                )
            )
            checked.sort(key=_evidence_order)
            if len(checked) >= 2 and _clear_match(checked, geometry):
                break
    best = checked[0] if checked else None
    runner_up = checked[1] if len(checked) > 1 else None
    if best is not None and _clear_match(checked, geometry):
        outcome = Outcome.MATCHED
    elif (best is not None and best.inliers >= geometry.review_inliers) or (
        geometry.review_when_network_matches and network.pallet is not None
    ):
        outcome = Outcome.REVIEW
    else:
        outcome = Outcome.NEW
    return VerifiedDecision(
        outcome=outcome,
        pallet=best.pallet if outcome is Outcome.MATCHED and best is not None else None,
        checked=checked,
        runner_up=runner_up,
        network=network,
    )


def _capture_evidence(
    pallet: PalletKey,
    pairing: BlockPairing,
    capture: int,
    query_features: CaptureFeatures,
    load_features: FeaturesLoader[PalletKey],
    geometry: GeometryParameters,
    executor: Executor | None,
) -> GeometricEvidence[PalletKey]:
    query_blocks, stored_blocks = query_features.compared_with(load_features(pallet, capture))

    def inliers(pair: tuple[int, int]) -> int:
        query = query_blocks[pair[0]]
        stored = stored_blocks[pair[1]] if pair[1] < len(stored_blocks) else None
        return 0 if query is None or stored is None else count_inliers(query, stored, geometry.matcher)

    counts = tuple(executor.map(inliers, pairing.pairs) if executor else map(inliers, pairing.pairs))
    return GeometricEvidence(
        pallet=pallet,
        pairing_score=pairing.score,
        capture=capture,
        pairs=pairing.pairs,
        block_inliers=counts,
        confirmed_blocks=sum(count >= geometry.block_inliers for count in counts),
    )


def _clear_match(checked: Sequence[GeometricEvidence[PalletKey]], geometry: GeometryParameters) -> bool:
    """Whether the strongest checked candidate is in the matched band (``checked`` strongest first)."""
    best = checked[0]
    other = checked[1].inliers if len(checked) > 1 else 0
    return (
        best.inliers >= geometry.match_inliers
        and best.confirmed_blocks >= geometry.match_blocks
        and best.inliers - other >= geometry.min_margin
    )


def _evidence_order(evidence: GeometricEvidence[PalletKey]) -> tuple[int, int, float, str]:
    """Sort key, strongest first: inliers, then confirmed blocks, then pairing score, then id."""
    return (-evidence.inliers, -evidence.confirmed_blocks, -evidence.pairing_score, str(evidence.pallet))


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
