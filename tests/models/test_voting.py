"""The decision rule's parts on hand-made fingerprints: shortlist, pairing, verification, decision."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models.runtime.voting import (
    Decision,
    Neighbour,
    VotingThresholds,
    decide,
    pairing_score,
    shortlist,
    verify,
)


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
