"""Block-level rank metrics against an independent reference, and pallet-level open-set figures."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from models.evaluation import open_set, ranking
from models.evaluation.calibration import choose_thresholds, sweep_thresholds
from models.evaluation.open_set import (
    PalletGallery,
    PalletQuery,
    decide_all,
    find_neighbours,
    one_pallet_gallery_neighbours,
    open_set_figures,
    pallet_scores,
)
from models.evaluation.ranking import cosine_distance_matrix, evaluate_rank
from models.runtime.voting import VotingThresholds, decide


def reference_eval_market1501(
    distmat: npt.NDArray[np.float64],
    q_pids: npt.NDArray[np.int64],
    g_pids: npt.NDArray[np.int64],
    q_camids: npt.NDArray[np.int64],
    g_camids: npt.NDArray[np.int64],
    max_rank: int,
) -> tuple[npt.NDArray[np.float64], float]:
    """Loop-based torchreid ``eval_market1501`` (stable sort; short CMCs padded with their last value)."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    all_cmc = []
    all_ap = []
    for q in range(num_q):
        distances = distmat[q]
        order = sorted(range(num_g), key=lambda j: (float(distances[j]), j))
        raw_cmc = []
        for j in order:
            if g_pids[j] == q_pids[q] and g_camids[j] == q_camids[q]:
                continue
            raw_cmc.append(1 if g_pids[j] == q_pids[q] else 0)
        if sum(raw_cmc) == 0:
            continue
        cmc = []
        found = 0
        for r in range(max_rank):
            if r < len(raw_cmc) and raw_cmc[r]:
                found = 1
            cmc.append(found)
        all_cmc.append(cmc)
        hits = 0
        precision_sum = 0.0
        for i, is_match in enumerate(raw_cmc):
            if is_match:
                hits += 1
                precision_sum += hits / (i + 1)
        all_ap.append(precision_sum / sum(raw_cmc))
    return np.asarray(all_cmc, dtype=np.float64).mean(axis=0), float(np.mean(all_ap))


@pytest.mark.parametrize("seed", range(6))
def test_evaluate_rank_matches_reference_on_random_matrices(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_q, num_g = rng.integers(5, 30), rng.integers(5, 40)
    q_pids, g_pids = rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    # Rounded distances create ties, which both implementations must break by gallery order.
    distmat = np.round(rng.random((num_q, num_g)), 1)

    expected_cmc, expected_map = reference_eval_market1501(
        distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10
    )
    result = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10)

    np.testing.assert_allclose(result.cmc, expected_cmc)
    assert result.mean_average_precision == pytest.approx(expected_map)


def test_evaluate_rank_in_chunks_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranking, "QUERY_CHUNK", 4)
    rng = np.random.default_rng(42)
    q_pids, g_pids = rng.integers(0, 5, 23), rng.integers(0, 5, 31)
    q_cams, g_cams = rng.integers(0, 2, 23), rng.integers(0, 2, 31)
    distmat = rng.random((23, 31))
    expected_cmc, expected_map = reference_eval_market1501(
        distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20
    )
    result = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    np.testing.assert_allclose(result.cmc, expected_cmc)
    assert result.mean_average_precision == pytest.approx(expected_map)


def test_evaluate_rank_hand_worked_example() -> None:
    # Gallery:            g0      g1      g2      g3      g4
    g_ids = np.array(["A", "B", "A", "C", "A"])
    g_cams = np.array([0, 1, 1, 1, 2])
    q_ids = np.array(["A", "B", "C"])
    q_cams = np.array([0, 0, 1])
    distmat = np.array(
        [
            # q0 (A, cam 0): g0 is A seen by cam 0 -> removed. Ranking left: g1 B, g2 A, g3 C, g4 A
            #   -> matches 0 1 0 1: CMC = 0 1 1 1, AP = (1/2 + 2/4) / 2 = 0.5
            [0.1, 0.2, 0.3, 0.4, 0.5],
            # q1 (B, cam 0): ranking g1 B, g3, g2, g4, g0 -> match at rank 1 (only B): CMC = 1 1 1 1 1, AP = 1
            [0.9, 0.1, 0.5, 0.3, 0.7],
            # q2 (C, cam 1): the only C (g3) is seen by cam 1 -> removed -> no match, query skipped
            [0.2, 0.2, 0.2, 0.1, 0.2],
        ]
    )
    result = evaluate_rank(distmat, q_ids, g_ids, q_cams, g_cams, max_rank=50)
    # Gallery of 5 -> CMC cut at rank 5. Mean over the 2 valid queries: rank 1 = (0 + 1) / 2, later ranks 1.
    np.testing.assert_allclose(result.cmc, [0.5, 1.0, 1.0, 1.0, 1.0])
    assert result.mean_average_precision == pytest.approx(0.75)
    assert result.num_queries == 3
    assert result.num_valid_queries == 2
    assert result.rank(1) == 0.5
    assert result.rank(10) == 1.0


def test_evaluate_rank_rejects_queries_without_any_match() -> None:
    with pytest.raises(ValueError, match="no query"):
        evaluate_rank(np.zeros((1, 2)), np.array([1]), np.array([2, 3]), np.array([0]), np.array([1, 1]))


def test_cosine_distance_matrix() -> None:
    distances = cosine_distance_matrix([[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(distances, [[0.0, 1 - np.sqrt(0.5)], [1.0, 1 - np.sqrt(0.5)]])


# ----------------------------------------------------------------------------------------------------


def _unit(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_open_set(
    seed: int, *, num_known: int, num_unknown: int, noise: float, dim: int = 512
) -> tuple[PalletGallery, list[PalletQuery]]:
    """Random block fingerprints; known queries are the gallery blocks plus noise, in shuffled block order."""
    rng = np.random.default_rng(seed)
    blocks = {f"P{i:03d}": _unit(rng.normal(size=(6, dim))) for i in range(num_known + num_unknown)}
    known_ids = sorted(blocks)[:num_known]
    gallery = PalletGallery(
        embeddings=np.concatenate([blocks[p] for p in known_ids]),
        pallets=tuple(p for p in known_ids for _ in range(6)),
    )
    queries = []
    for pallet, fingerprints in blocks.items():
        observed = _unit(fingerprints + noise * rng.normal(size=fingerprints.shape) / np.sqrt(dim))
        queries.append(
            PalletQuery(pallet=pallet, known=pallet in known_ids, embeddings=observed[rng.permutation(6)])
        )
    return gallery, queries


def test_perfect_separation_identifies_everything() -> None:
    gallery, queries = make_open_set(0, num_known=8, num_unknown=5, noise=0.3)
    neighbours = find_neighbours(queries, gallery, top_k=10)
    decisions = decide_all(
        neighbours, VotingThresholds(block_threshold=0.5, min_votes=3, score_threshold=0.5)
    )

    figures = open_set_figures(neighbours, [d.pallet for d in decisions])

    assert figures.identification_rate == 1.0
    assert figures.false_reject_rate == 0.0
    assert figures.misidentification_rate == 0.0
    assert figures.unknown_registered_rate == 1.0
    assert figures.unknown_false_match_rate == 0.0
    assert (figures.num_known, figures.num_unknown) == (8, 5)


def test_unknown_copies_of_gallery_pallets_are_false_matches() -> None:
    gallery, queries = make_open_set(1, num_known=4, num_unknown=0, noise=0.1)
    # A pallet claimed unknown whose blocks are those of P001: the rule must match it to P001.
    twin = PalletQuery(pallet="X", known=False, embeddings=queries[1].embeddings)
    neighbours = find_neighbours([*queries, twin], gallery, top_k=10)
    decisions = decide_all(
        neighbours, VotingThresholds(block_threshold=0.5, min_votes=3, score_threshold=0.5)
    )

    assert decisions[-1].pallet == "P001"
    figures = open_set_figures(neighbours, [d.pallet for d in decisions])
    assert figures.unknown_false_match_rate == 1.0
    assert figures.identification_rate == 1.0


def test_identical_pallets_tie_resolves_deterministically() -> None:
    rng = np.random.default_rng(2)
    fingerprints = _unit(rng.normal(size=(6, 64)))
    # Two stored pallets with exactly the same fingerprints, stored in reverse id order.
    gallery = PalletGallery(
        embeddings=np.concatenate([fingerprints, fingerprints]), pallets=("B",) * 6 + ("A",) * 6
    )
    query = PalletQuery(pallet="B", known=True, embeddings=fingerprints[::-1].copy())
    thresholds = VotingThresholds(block_threshold=0.5, min_votes=2, score_threshold=0.5)

    outcomes = {
        decide_all(find_neighbours([query], gallery, top_k=12), thresholds)[0].pallet for _ in range(3)
    }

    # Equal votes and scores: the rule falls back to the pallet id, so "A" wins every time.
    assert outcomes == {"A"}
    neighbours = find_neighbours([query], gallery, top_k=12)
    figures = open_set_figures(neighbours, ["A"])
    assert figures.misidentification_rate == 1.0


def test_top_k_limits_the_neighbours() -> None:
    gallery, queries = make_open_set(3, num_known=3, num_unknown=0, noise=0.1)
    neighbours = find_neighbours(queries, gallery, top_k=4)
    assert all(len(block) == 4 for q in neighbours for block in q.neighbours)
    similarities = [n.similarity for n in neighbours[0].neighbours[0]]
    assert similarities == sorted(similarities, reverse=True)


def test_neighbours_do_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    gallery, queries = make_open_set(9, num_known=4, num_unknown=3, noise=1.0, dim=32)
    whole = find_neighbours(queries, gallery, top_k=7)
    monkeypatch.setattr(open_set, "QUERY_CHUNK", 5)
    assert find_neighbours(queries, gallery, top_k=7) == whole


def test_sweep_agrees_with_decide_at_every_grid_point() -> None:
    # Heavy noise and small dimension so that decisions vary along the grid.
    gallery, queries = make_open_set(4, num_known=6, num_unknown=4, noise=4.0, dim=24)
    neighbours = find_neighbours(queries, gallery, top_k=5)
    block_thresholds, min_votes_grid, score_thresholds = (0.0, 0.3, 0.5), (1, 2, 4), (0.0, 0.1, 0.2, 0.3)
    sweep = sweep_thresholds(
        neighbours,
        block_thresholds=block_thresholds,
        min_votes=min_votes_grid,
        score_thresholds=score_thresholds,
    )

    seen_rates = set()
    for b, block_threshold in enumerate(block_thresholds):
        for m, min_votes in enumerate(min_votes_grid):
            for s, score_threshold in enumerate(score_thresholds):
                thresholds = VotingThresholds(block_threshold, min_votes, score_threshold)
                direct = open_set_figures(
                    neighbours, [decide(q.neighbours, q.scores, thresholds).pallet for q in neighbours]
                )
                assert sweep.figures_at(b, m, s) == direct
                seen_rates.add(direct.identification_rate)
    assert len(seen_rates) > 2, "the grid should exercise different outcomes"


def test_pallet_scores_separate_genuine_from_impostor() -> None:
    gallery, queries = make_open_set(5, num_known=5, num_unknown=3, noise=0.3)
    scores = pallet_scores(find_neighbours(queries, gallery, top_k=10))
    assert scores.genuine.shape == (5,)
    assert scores.impostor.shape == (8,)
    assert scores.genuine.min() > 0.8
    assert scores.impostor.max() < 0.3


def test_choose_thresholds_meets_target_and_reproduces_with_decide() -> None:
    gallery, queries = make_open_set(6, num_known=10, num_unknown=10, noise=0.5, dim=64)
    neighbours = find_neighbours(queries, gallery, top_k=10)
    sweep = sweep_thresholds(neighbours)

    choice = choose_thresholds(sweep, max_unknown_match_rate=0.0)

    assert choice.target_met
    assert choice.figures.unknown_false_match_rate == 0.0
    assert choice.figures.identification_rate == 1.0
    direct = open_set_figures(neighbours, [d.pallet for d in decide_all(neighbours, choice.thresholds)])
    assert direct == choice.figures

    # The middle of the band of score thresholds that reach these figures: as many grid steps down to the
    # first threshold that lets an unknown pallet through (or loses a known one) as up to the first that
    # loses a known pallet (within one step).
    def safe(score_threshold: float) -> bool:
        at = VotingThresholds(choice.thresholds.block_threshold, choice.thresholds.min_votes, score_threshold)
        figures = open_set_figures(neighbours, [d.pallet for d in decide_all(neighbours, at)])
        return figures.unknown_false_match_rate == 0.0 and figures.identification_rate == 1.0

    grid = sweep.score_thresholds
    s = grid.index(choice.thresholds.score_threshold)
    low = s
    while low > 0 and safe(grid[low - 1]):
        low -= 1
    high = s
    while high + 1 < len(grid) and safe(grid[high + 1]):
        high += 1
    assert high > low + 4, "the example should have a wide band"
    assert abs((s - low) - (high - s)) <= 1


def _known_pallets_with_unknown_twins(seed: int) -> list[PalletQuery]:
    """Known pallets plus 'unknown' twins with exactly the same fingerprints: no threshold separates them."""
    _, queries = make_open_set(seed, num_known=4, num_unknown=0, noise=0.1)
    twins = [PalletQuery(pallet=f"X{i}", known=False, embeddings=q.embeddings) for i, q in enumerate(queries)]
    return [*queries, *twins]


def test_choose_thresholds_rejects_everything_when_unknowns_cannot_be_separated() -> None:
    queries = _known_pallets_with_unknown_twins(7)
    gallery, _ = make_open_set(7, num_known=4, num_unknown=0, noise=0.1)
    sweep = sweep_thresholds(find_neighbours(queries, gallery, top_k=10))

    choice = choose_thresholds(sweep, max_unknown_match_rate=0.005)

    # Every known pallet accepted drags its twin along, so only rejecting all of them meets the target.
    assert choice.target_met
    assert choice.figures.unknown_false_match_rate == 0.0
    assert choice.figures.identification_rate == 0.0
    assert choice.figures.false_reject_rate == 1.0


def test_choose_thresholds_reports_unreachable_target() -> None:
    queries = _known_pallets_with_unknown_twins(7)
    gallery, _ = make_open_set(7, num_known=4, num_unknown=0, noise=0.1)
    sweep = sweep_thresholds(find_neighbours(queries, gallery, top_k=10), score_thresholds=(0.0, 0.25, 0.5))

    choice = choose_thresholds(sweep, max_unknown_match_rate=0.005)

    assert not choice.target_met
    assert choice.figures.unknown_false_match_rate == pytest.approx(sweep.unknown_false_match_rate.min())
    assert choice.figures.unknown_false_match_rate == 1.0


def test_choose_thresholds_needs_unknown_queries() -> None:
    gallery, queries = make_open_set(8, num_known=3, num_unknown=0, noise=0.1)
    sweep = sweep_thresholds(find_neighbours(queries, gallery), block_thresholds=(0.5,), min_votes=(2,))
    with pytest.raises(ValueError, match="unknown"):
        choose_thresholds(sweep)


def test_calibration_keeps_strangers_out_of_a_one_pallet_gallery() -> None:
    """In a full gallery a stranger's block votes split among many pallets; against the single pallet of a
    new deployment all of them go to that pallet. The one-pallet sweep must veto thresholds that only the
    full gallery keeps safe."""
    rng = np.random.default_rng(3)

    def unit(rows: int) -> npt.NDArray[np.float64]:
        vectors = rng.normal(size=(rows, 12))
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    gallery_pallets = [f"G{i:02d}" for i in range(40)]
    gallery = PalletGallery(
        embeddings=unit(6 * len(gallery_pallets)), pallets=tuple(p for p in gallery_pallets for _ in range(6))
    )
    known = [
        PalletQuery(pallet=p, known=True, embeddings=gallery.embeddings[6 * i : 6 * i + 6] + 0.6 * unit(6))
        for i, p in enumerate(gallery_pallets)
    ]
    strangers = [PalletQuery(pallet=f"U{i:02d}", known=False, embeddings=unit(6)) for i in range(40)]
    queries = known + strangers
    full = sweep_thresholds(find_neighbours(queries, gallery, top_k=10))
    one_pallet = sweep_thresholds(one_pallet_gallery_neighbours(queries, gallery, seed=0))

    unguarded = choose_thresholds(full)
    guarded = choose_thresholds(full, one_pallet_sweep=one_pallet)

    trials = one_pallet_gallery_neighbours(queries, gallery, seed=0)
    assert len(trials) == 40 * 5

    def stranger_matches(thresholds: VotingThresholds) -> int:
        return sum(d.pallet is not None for d in decide_all(trials, thresholds))

    assert stranger_matches(unguarded.thresholds) > 0
    assert stranger_matches(guarded.thresholds) == 0
    assert guarded.target_met and guarded.figures.identification_rate == 1.0
