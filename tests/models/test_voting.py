"""The decision rule on hand-made fingerprints and features: shortlist, pairing, verification, bands."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from models.runtime.local_features import (
    DESCRIPTOR_BYTES,
    ExtractorSettings,
    LocalFeatures,
    at_side_view_scale,
    extract,
)
from models.runtime.visual_words import SparseWords
from models.runtime.voting import (
    CaptureFeatures,
    Decision,
    GeometricEvidence,
    GeometryParameters,
    Neighbour,
    Outcome,
    VerifiedDecision,
    VotingThresholds,
    WordCandidate,
    decide,
    decide_verified,
    pair_blocks,
    pairing_score,
    rank_word_candidates,
    shortlist,
    side_scale_features,
    verify,
)
from models.synth import SynthConfig, render_pallet


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_pairing_score_on_a_hand_worked_example() -> None:
    # Similarities between 2 query blocks (rows) and 2 stored blocks (columns):
    #   q0: s0 0.9, s1 0.8      best block per query would take s0 twice: (0.9 + 0.7) / 2 = 0.8
    #   q1: s0 0.7, s1 0.1      one-to-one: q0-s1, q1-s0 = (0.8 + 0.7) / 2 = 0.75 beats q0-s0, q1-s1 = 0.5
    similarities = np.array([[0.9, 0.8], [0.7, 0.1]])
    # identity rows as the stored blocks make query @ stored.T the similarity matrix itself
    assert pairing_score(similarities, np.eye(2)) == pytest.approx(0.75)


def test_pairing_score_equals_the_best_permutation_and_ignores_block_order() -> None:
    rng = np.random.default_rng(0)
    query, stored = _unit(rng.normal(size=(6, 16))), _unit(rng.normal(size=(6, 16)))
    similarities = query @ stored.T
    brute_force = max(
        np.mean([similarities[i, j] for i, j in enumerate(order)])
        for order in itertools.permutations(range(6))
    )
    assert pairing_score(query, stored) == pytest.approx(brute_force)
    assert pairing_score(query[::-1], stored[rng.permutation(6)]) == pytest.approx(brute_force)


def test_pairing_score_counts_unpaired_query_blocks_as_zero() -> None:
    blocks = np.eye(4)
    assert pairing_score(blocks, blocks) == pytest.approx(1.0)
    assert pairing_score(blocks, blocks[:2]) == pytest.approx(0.5), "two query blocks have no partner"
    assert pairing_score(blocks[:2], blocks) == pytest.approx(1.0), "a partial query pairs what it has"
    assert pairing_score(blocks, np.empty((0, 4))) == 0.0
    with pytest.raises(ValueError, match="cannot pair"):
        pairing_score(blocks, np.eye(3))


def test_one_stored_block_cannot_explain_every_query_block() -> None:
    # A stranger whose six blocks all resemble one stored block: best-block scoring would give it 0.9.
    rng = np.random.default_rng(1)
    stored = _unit(rng.normal(size=(6, 64)))
    lookalike = _unit(np.repeat(stored[:1], 6, axis=0) + 0.5 * _unit(rng.normal(size=(6, 64))))
    best_block = float((lookalike @ stored.T).max(axis=1).mean())
    assert pairing_score(lookalike, stored) < best_block - 0.3


def test_verify_takes_each_pallet_at_its_best_capture() -> None:
    rng = np.random.default_rng(2)
    query = _unit(rng.normal(size=(6, 32)))
    old_capture = _unit(query + 2.0 * rng.normal(size=query.shape))
    scores = verify(query, {"A": [old_capture, query[::-1].copy()], "B": [old_capture], "C": []})
    assert scores["A"] == pytest.approx(1.0)
    assert scores["B"] == pytest.approx(pairing_score(query, old_capture))
    assert scores["C"] == 0.0


def test_shortlist_ranks_pallets_by_summed_best_similarity() -> None:
    neighbours = [
        [Neighbour("A", 0.9), Neighbour("A", 0.95), Neighbour("B", 0.8)],
        [Neighbour("B", 0.7), Neighbour("C", 0.6)],
        [Neighbour("C", 0.5), Neighbour("D", 0.5)],
    ]
    # evidence: A 0.95, B 1.5, C 1.1, D 0.5 (A's two neighbours in one block count once, at the best)
    assert shortlist(neighbours, 3) == ["B", "C", "A"]
    assert shortlist(neighbours, 10) == ["B", "C", "A", "D"]
    with pytest.raises(ValueError):
        shortlist(neighbours, 0)


def test_decide_ranks_by_verified_score_and_gates_on_votes() -> None:
    neighbours = [[Neighbour("A", 0.9)], [Neighbour("A", 0.85)], [Neighbour("B", 0.7)]]
    scores = {"A": 0.6, "B": 0.8}
    thresholds = VotingThresholds(block_threshold=0.5, min_votes=1, score_threshold=0.5)

    decision = decide(neighbours, scores, thresholds)
    assert decision.pallet == "B", "the higher verified score wins over more votes"
    assert [(c.pallet, c.votes, c.score) for c in decision.candidates] == [("B", 1, 0.8), ("A", 2, 0.6)]

    two_votes = VotingThresholds(block_threshold=0.5, min_votes=2, score_threshold=0.5)
    assert decide(neighbours, scores, two_votes).pallet == "A", "B lacks votes, A clears both thresholds"
    strict = VotingThresholds(block_threshold=0.5, min_votes=1, score_threshold=0.9)
    rejected = decide(neighbours, scores, strict)
    assert rejected.pallet is None and (rejected.score, rejected.votes) == (0.8, 1), "best rejected reported"
    assert decide(neighbours, scores, thresholds, preferred={"A"}).pallet == "A"
    empty: Decision[str] = decide([[], []], {}, thresholds)
    assert empty.pallet is None and empty.blocks_compared == 2 and empty.candidates == []


def test_pair_blocks_reports_the_pairs_behind_the_score() -> None:
    permutation = [2, 0, 1]
    stored = np.eye(3)[permutation]  # stored block j is query block permutation[j]
    pairing = pair_blocks(np.eye(3), stored)
    assert pairing.score == pytest.approx(1.0)
    assert pairing.pairs == ((0, 1), (1, 2), (2, 0))
    assert pair_blocks(np.eye(3), np.zeros((0, 3))).pairs == ()


# --- geometric verification on hand-made features -------------------------------------------------------
#
# A query block's features are n keypoints with random descriptors. A stored block "sharing k" holds the same
# descriptors for k of them, at the query points shifted by (5, 3) (one homography), and nothing else, so
# exactly k ratio-test matches are consistent: k inliers (0 below the matcher's 8). Descriptors of different
# blocks are independent random strings, which never pass the ratio test against each other in these sizes.

_RNG = np.random.default_rng(42)
_QUERY_FEATURES = [
    LocalFeatures(
        points=_RNG.uniform(10, 150, (80, 2)).astype(np.float32),
        descriptors=_RNG.integers(0, 256, (80, DESCRIPTOR_BYTES), dtype=np.uint8),
        working_size=(320, 200),
    )
    for _ in range(6)
]
_QUERY_FINGERPRINTS = np.eye(6)
_THRESHOLDS = VotingThresholds(block_threshold=0.5, min_votes=2, score_threshold=0.5)


def _sharing(block: int, k: int) -> LocalFeatures:
    """A stored block that shares ``k`` keypoints (under one translation) with query block ``block``."""
    query = _QUERY_FEATURES[block]
    if k == 0:  # an unrelated block: fresh random descriptors
        rng = np.random.default_rng(1000 + block)
        return LocalFeatures(
            points=rng.uniform(10, 150, (80, 2)).astype(np.float32),
            descriptors=rng.integers(0, 256, (80, DESCRIPTOR_BYTES), dtype=np.uint8),
            working_size=(320, 200),
        )
    return LocalFeatures(
        points=query.points[:k] + np.array([5, 3], np.float32),
        descriptors=query.descriptors[:k].copy(),
        working_size=(320, 200),
    )


class _Gallery:
    """Stored captures with hand-made features; records which captures the rule asked features for."""

    def __init__(self, shared: dict[str, list[list[int]]], order: list[int] | None = None) -> None:
        # shared[pallet][capture][query block] = keypoints shared; stored block order is ``order``
        self.order = order or list(range(6))
        self.fingerprints = {
            pallet: [_QUERY_FINGERPRINTS[self.order] for _ in captures] for pallet, captures in shared.items()
        }
        self.features: dict[tuple[str, int], list[LocalFeatures | None]] = {
            (pallet, index): [_sharing(block, counts[block]) for block in self.order]
            for pallet, captures in shared.items()
            for index, counts in enumerate(captures)
        }
        self.loaded: list[tuple[str, int]] = []

    def load(self, pallet: str, capture: int) -> CaptureFeatures:
        self.loaded.append((pallet, capture))
        return CaptureFeatures(list(self.features[(pallet, capture)]))


def _neighbours(pallet: str, similarity: float = 0.9) -> list[list[Neighbour[str]]]:
    return [[Neighbour(pallet, similarity)] for _ in range(6)]


def _decide(
    gallery: _Gallery,
    geometry: GeometryParameters | None = None,
    neighbours: list[list[Neighbour[str]]] | None = None,
    scores: dict[str, float] | None = None,
) -> VerifiedDecision[str]:
    """The rule on the gallery; ``scores`` (pairing score per pallet) scale the captures' fingerprints."""
    captures = {
        pallet: [rows * (scores or {}).get(pallet, 1.0) for rows in stored]
        for pallet, stored in gallery.fingerprints.items()
    }
    return decide_verified(
        neighbours if neighbours is not None else _neighbours("A"),
        _QUERY_FINGERPRINTS,
        CaptureFeatures(_QUERY_FEATURES),
        captures,
        gallery.load,
        _THRESHOLDS,
        geometry or GeometryParameters(),
    )


def test_a_clear_match_is_matched_with_the_runner_up_recorded() -> None:
    # A: 60+50+40+30+20+10 = 210 inliers, 4 blocks >= 30; B: 12 on one block -> margin 198
    gallery = _Gallery(
        {"A": [[60, 50, 40, 30, 20, 10]], "B": [[12, 0, 0, 0, 0, 0]]}, order=[3, 5, 0, 1, 4, 2]
    )
    decision = _decide(gallery, scores={"A": 0.9, "B": 0.8})
    assert decision.outcome is Outcome.MATCHED
    assert decision.pallet == "A"
    assert not decision.review
    best = decision.checked[0]
    assert best.inliers == 210
    assert best.confirmed_blocks == 4
    # the network paired query block i with stored position order.index(i); each pair kept its inliers
    assert dict(best.pairs) == {block: [3, 5, 0, 1, 4, 2].index(block) for block in range(6)}
    assert dict(zip((q for q, _ in best.pairs), best.block_inliers, strict=True)) == {
        0: 60,
        1: 50,
        2: 40,
        3: 30,
        4: 20,
        5: 10,
    }
    assert decision.runner_up is not None
    assert (decision.runner_up.pallet, decision.runner_up.inliers) == ("B", 12)
    assert decision.network.pallet == "A"


def test_two_strong_candidates_are_flagged_for_review_not_merged() -> None:
    # A 210, B 170: both clear the match sum, but the margin (40) is under min_margin (50)
    gallery = _Gallery({"A": [[60, 50, 40, 30, 20, 10]], "B": [[50, 40, 30, 20, 20, 10]]})
    decision = _decide(gallery, scores={"A": 0.9, "B": 0.8})
    assert decision.outcome is Outcome.REVIEW
    assert decision.pallet is None
    assert [evidence.pallet for evidence in decision.checked] == ["A", "B"]
    assert _decide(gallery, GeometryParameters(min_margin=40), scores={"A": 0.9, "B": 0.8}).pallet == "A"


@pytest.mark.parametrize(
    ("counts", "outcome"),
    [
        ([40, 40, 30, 30, 0, 0], Outcome.MATCHED),  # 140 >= 130 inliers, 4 blocks >= 25
        ([75, 60, 0, 0, 0, 0], Outcome.MATCHED),  # 135 inliers, 2 confirmed blocks
        ([80, 20, 24, 24, 0, 0], Outcome.REVIEW),  # 148 inliers but one confirmed block only
        ([24, 24, 24, 24, 24, 20], Outcome.REVIEW),  # 140 inliers, no block confirmed
        ([40, 40, 40, 0, 0, 0], Outcome.REVIEW),  # 120 < 130, but >= review_inliers
        ([40, 39, 0, 0, 0, 0], Outcome.NEW),  # 79 < 80: new, confirmed blocks or not
        ([20, 20, 0, 0, 0, 0], Outcome.NEW),
    ],
)
def test_bands_on_one_candidate(counts: list[int], outcome: Outcome) -> None:
    no_network_match = _neighbours("A", similarity=0.1)  # no votes: the network stage matches nothing
    decision = _decide(_Gallery({"A": [counts]}), neighbours=no_network_match)
    assert decision.network.pallet is None
    assert decision.checked[0].inliers == sum(counts)
    assert decision.outcome is outcome
    assert decision.runner_up is None


def test_a_network_match_without_geometric_support_is_new_unless_asked_to_flag_it() -> None:
    gallery = _Gallery({"A": [[0, 0, 0, 0, 0, 0]]})
    decision = _decide(gallery)
    assert decision.network.pallet == "A"
    assert decision.outcome is Outcome.NEW
    assert _decide(gallery, GeometryParameters(review_when_network_matches=True)).outcome is Outcome.REVIEW


def test_candidates_are_checked_by_pairing_score_and_the_rest_only_while_unclear() -> None:
    shared = {"A": [[60] * 6], "B": [[0] * 6], "C": [[0] * 6], "D": [[0] * 6]}
    scores = {"A": 0.9, "B": 0.8, "C": 0.7, "D": 0.6}
    clear = _Gallery(shared)
    assert _decide(clear, scores=scores).outcome is Outcome.MATCHED
    assert clear.loaded == [("A", 0), ("B", 0)]  # the runner-up is always checked, C only if unclear

    # the true pallet ranked third by the network: still found, and D (beyond candidates_checked) never loaded
    unclear = _Gallery(shared)
    three = GeometryParameters(candidates_checked=3)
    decision = _decide(unclear, three, scores={"A": 0.7, "B": 0.9, "C": 0.8, "D": 0.6})
    assert decision.pallet == "A"
    assert unclear.loaded == [("B", 0), ("C", 0), ("A", 0)]
    ranked_last = _Gallery(shared)
    assert _decide(ranked_last, three, scores={"A": 0.5, "B": 0.9, "C": 0.8, "D": 0.6}).outcome is Outcome.NEW
    assert ("A", 0) not in ranked_last.loaded

    one = _Gallery(shared)
    assert _decide(one, GeometryParameters(candidates_checked=1), scores=scores).pallet == "A"
    assert one.loaded == [("A", 0)]


def _word_decision(
    gallery: _Gallery,
    network_pallets: list[str],
    words: list[WordCandidate[str]],
    geometry: GeometryParameters,
) -> VerifiedDecision[str]:
    """The rule when the network shortlisted only ``network_pallets`` and visual words found ``words``."""
    return decide_verified(
        [[Neighbour(p, 0.1) for p in network_pallets] for _ in range(6)],
        _QUERY_FINGERPRINTS,
        CaptureFeatures(_QUERY_FEATURES),
        {pallet: gallery.fingerprints[pallet] for pallet in network_pallets},
        gallery.load,
        _THRESHOLDS,
        geometry,
        word_candidates=lambda: words,
    )


def test_a_pallet_the_network_missed_is_found_through_its_visual_words() -> None:
    order = [2, 0, 1, 5, 4, 3]
    gallery = _Gallery({"A": [[60] * 6], "B": [[0] * 6], "C": [[5] * 6]}, order=order)
    paired_by_words = pair_blocks(np.eye(6), np.eye(6)[order])  # the pairing the words found
    words = [
        WordCandidate("B", 0, pair_blocks(np.eye(6), np.eye(6))),  # already checked: skipped
        WordCandidate("A", 0, paired_by_words),
    ]
    decision = _word_decision(gallery, ["B", "C"], words, GeometryParameters(candidates_checked=2))
    assert (decision.outcome, decision.pallet) == (Outcome.MATCHED, "A")
    assert gallery.loaded == [("B", 0), ("C", 0), ("A", 0)]
    assert decision.checked[0].pairs == paired_by_words.pairs and decision.checked[0].inliers == 360

    off = _Gallery({"A": [[60] * 6], "B": [[0] * 6], "C": [[5] * 6]}, order=order)
    no_words = GeometryParameters(candidates_checked=2, word_candidates_checked=0)
    assert _word_decision(off, ["B", "C"], words, no_words).outcome is Outcome.NEW
    assert ("A", 0) not in off.loaded


def test_word_candidates_are_not_checked_once_the_network_candidates_match_clearly() -> None:
    gallery = _Gallery({"A": [[60] * 6], "B": [[0] * 6], "C": [[0] * 6]})
    words = [WordCandidate("C", 0, pair_blocks(np.eye(6), np.eye(6)))]
    decision = _word_decision(gallery, ["A", "B"], words, GeometryParameters())
    assert decision.pallet == "A"
    assert ("C", 0) not in gallery.loaded


def _words(*indices: int) -> SparseWords:
    values = np.full(len(indices), 1 / np.sqrt(len(indices)), np.float32)
    return SparseWords(np.array(indices, np.int32), values, dimensions=100)


def test_word_candidates_are_ranked_by_their_one_to_one_pairing() -> None:
    query = [_words(1, 2), _words(3, 4), _words(5, 6)]
    stored: dict[str, list[tuple[int, list[SparseWords | None]]]] = {
        # one block sharing everything with every query block cannot explain all three
        "greedy": [(0, [_words(1, 2, 3, 4, 5, 6), _words(90), _words(91)])],
        # two captures: the second pairs every block, in another order
        "true": [
            (0, [_words(1, 2), _words(80), _words(81)]),
            (1, [_words(5, 6), _words(1, 2), _words(3, 4)]),
        ],
        "empty": [(0, [])],
    }
    ranked = rank_word_candidates(query, stored)
    assert [(c.pallet, c.capture) for c in ranked] == [("true", 1), ("greedy", 0)]
    assert ranked[0].pairing.score == pytest.approx(1.0)
    assert dict(ranked[0].pairing.pairs) == {0: 1, 1: 2, 2: 0}


def test_the_capture_with_most_inliers_among_the_checked_ones_is_the_evidence() -> None:
    gallery = _Gallery({"A": [[10] * 6, [50] * 6]})
    # capture 0 pairs better (unscaled rows); capture 1 has more inliers but is checked only with 2 captures
    gallery.fingerprints["A"][1] = gallery.fingerprints["A"][1] * 0.9
    assert _decide(gallery).checked[0].capture == 0
    decision = _decide(gallery, GeometryParameters(captures_checked=2))
    assert (decision.checked[0].capture, decision.checked[0].inliers, decision.pallet) == (1, 300, "A")


def test_captures_of_one_kind_meet_with_their_own_features_and_side_views_with_side_scale_ones() -> None:
    own, scaled, side = (_sharing(0, k) for k in (10, 20, 30))
    images = CaptureFeatures([own, own], at_side_scale=[scaled, None])  # block 1 was stored without
    older_images = CaptureFeatures([own, own])
    sides = CaptureFeatures([side, side], from_side_views=True)
    assert images.compared_with(older_images) == ([own, own], [own, own])
    assert sides.compared_with(sides) == ([side, side], [side, side])
    assert sides.compared_with(images) == ([side, side], [scaled, own])
    assert images.compared_with(sides) == ([scaled, own], [side, side])
    assert sides.compared_with(older_images) == ([side, side], [own, own])
    with pytest.raises(ValueError, match="at_side_scale"):
        CaptureFeatures([side], from_side_views=True, at_side_scale=[scaled])
    with pytest.raises(ValueError, match="at_side_scale"):
        CaptureFeatures([own, own], at_side_scale=[scaled])


def test_a_side_view_query_is_verified_against_the_stored_side_scale_features() -> None:
    """The stored block images share nothing with the side-view query at their own scale and 60 keypoints a
    block at the side-view scale: matched through those, while a block-image query still meets their own."""
    gallery = _Gallery({"A": [[0] * 6], "B": [[0] * 6]})
    gallery.features = {
        ("A", 0): [_sharing(block, 0) for block in range(6)],
        ("B", 0): [_sharing(block, 0) for block in range(6)],
    }
    at_side_scale = {
        "A": [_sharing(block, 60) for block in range(6)],
        "B": [_sharing(block, 0) for block in range(6)],
    }

    def load(pallet: str, capture: int) -> CaptureFeatures:
        return CaptureFeatures(gallery.features[(pallet, capture)], at_side_scale=at_side_scale[pallet])

    def decision(query: CaptureFeatures) -> VerifiedDecision[str]:
        return decide_verified(
            _neighbours("A"),
            _QUERY_FINGERPRINTS,
            query,
            gallery.fingerprints,
            load,
            _THRESHOLDS,
            GeometryParameters(),
        )

    from_sides = decision(CaptureFeatures(_QUERY_FEATURES, from_side_views=True))
    assert (from_sides.outcome, from_sides.pallet, from_sides.checked[0].inliers) == (
        Outcome.MATCHED,
        "A",
        360,
    )
    assert decision(CaptureFeatures(_QUERY_FEATURES)).outcome is Outcome.NEW


def test_side_scale_features_keep_only_a_side_view_face_s_detail() -> None:
    rng = np.random.default_rng(3)
    fine = Image.fromarray(rng.integers(0, 256, (175, 280, 3), dtype=np.uint8))
    coarse = at_side_view_scale(fine, 112)
    assert coarse.size == fine.size
    # box-filtered to 112 px and enlarged: pixel noise is averaged away
    assert np.asarray(coarse, np.float32).std() < 0.6 * np.asarray(fine, np.float32).std()
    assert at_side_view_scale(fine, 280) is fine  # already no wider than the face
    geometry = GeometryParameters()
    features = side_scale_features(fine, geometry)
    assert features.working_size == extract(fine, geometry.side_view_extractor).working_size
    assert len(features) <= geometry.side_view_extractor.max_features
    with pytest.raises(ValueError, match="side_scale_width"):
        side_scale_features(fine, GeometryParameters(side_scale_width=0))


def test_stored_blocks_without_features_count_zero() -> None:
    gallery = _Gallery({"A": [[60] * 6]})
    gallery.features[("A", 0)][2] = None
    assert _decide(gallery).checked[0].block_inliers.count(0) == 1


def test_parallel_matching_gives_the_same_decision() -> None:
    gallery = _Gallery({"A": [[60, 50, 40, 30, 20, 10]], "B": [[12, 0, 0, 0, 0, 0]]})
    captures = {pallet: stored for pallet, stored in gallery.fingerprints.items()}
    query = CaptureFeatures(_QUERY_FEATURES)
    arguments = (_neighbours("A"), _QUERY_FINGERPRINTS, query, captures, gallery.load, _THRESHOLDS)
    sequential = decide_verified(*arguments, GeometryParameters())
    with ThreadPoolExecutor(max_workers=2) as pool:
        parallel = decide_verified(*arguments, GeometryParameters(), executor=pool)
    assert parallel == sequential


def test_a_query_with_mismatched_features_is_refused() -> None:
    with pytest.raises(ValueError, match="feature sets"):
        decide_verified(
            [],
            np.eye(6),
            CaptureFeatures(_QUERY_FEATURES[:5]),
            {},
            _Gallery({}).load,
            _THRESHOLDS,
            GeometryParameters(),
        )


def test_an_empty_gallery_is_new() -> None:
    decision = _decide(_Gallery({}), neighbours=[[] for _ in range(6)])
    assert (decision.outcome, decision.checked, decision.runner_up) == (Outcome.NEW, [], None)


@pytest.mark.parametrize(
    "make",
    [
        lambda: GeometryParameters(candidates_checked=0),
        lambda: GeometryParameters(captures_checked=0),
        lambda: GeometryParameters(min_margin=-1),
        lambda: GeometryParameters(review_inliers=200, match_inliers=150),
        lambda: GeometryParameters(side_view_extractor=ExtractorSettings(working_long_side=480)),
        lambda: GeometryParameters(side_scale_width=15),
        lambda: GeometryParameters(side_scale_width=-1),
    ],
)
def test_invalid_geometry_parameters_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_geometric_evidence_totals_its_blocks() -> None:
    evidence = GeometricEvidence("A", 0.8, 0, ((0, 0), (1, 1)), (30, 12), 1)
    assert evidence.inliers == 42


# --- the whole rule on rendered captures (real extraction) ----------------------------------------------


def test_rendered_pallets_known_one_matched_unknown_one_new() -> None:
    """Receipts of two pallets (camera 1) in the gallery; dispatches seen by camera 2 of a known and an
    unknown pallet. Fingerprints are oracles (one direction per block): the network is not under test."""
    config = SynthConfig(pallets=3, cameras=2, frames=1, seed=5)
    features: dict[tuple[int, str], list[LocalFeatures]] = {}
    for index in range(3):
        for capture in sorted(render_pallet(config, index), key=lambda c: c.block):
            image = Image.open(io.BytesIO(capture.jpeg)).convert("RGB")
            features.setdefault((index, capture.camera), []).append(extract(image))
    fingerprints = {index: np.eye(18)[6 * index : 6 * index + 6] for index in range(3)}
    captures = {index: [fingerprints[index]] for index in (0, 1)}

    def load(pallet: int, capture: int) -> CaptureFeatures:
        return CaptureFeatures(features[(pallet, "cam_1")])

    def dispatch(index: int) -> VerifiedDecision[int]:
        # the network stage sees only noise-level similarity, so the bands rest on the geometry alone
        query = fingerprints[index] + 0.3 * np.eye(18)[6 * ((index + 1) % 2) : 6 * ((index + 1) % 2) + 6]
        neighbours = [[Neighbour(pallet, 0.2) for pallet in (0, 1)] for _ in range(6)]
        return decide_verified(
            neighbours,
            query,
            CaptureFeatures(features[(index, "cam_2")]),
            captures,
            load,
            _THRESHOLDS,
            GeometryParameters(),
        )

    known, unknown = dispatch(0), dispatch(2)
    assert (known.outcome, known.pallet) == (Outcome.MATCHED, 0)
    assert known.runner_up is not None and known.runner_up.pallet == 1
    assert unknown.outcome is Outcome.NEW
    assert max(evidence.inliers for evidence in unknown.checked) < GeometryParameters().review_inliers
