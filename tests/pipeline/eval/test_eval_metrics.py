"""Every metric against a small case computed by hand (and loop references in float64)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.eval import metrics


def _auroc_loop(scores: np.ndarray, labels: np.ndarray) -> float:
    """All positive-negative pairs: win 1, tie 1/2."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_hand_case_with_ties() -> None:
    # positives 0.9, 0.5, 0.3 ; negatives 0.5, 0.2.
    # pairs: (0.9>0.5) 1, (0.9>0.2) 1, (0.5=0.5) 0.5, (0.5>0.2) 1, (0.3<0.5) 0, (0.3>0.2) 1 -> 4.5 / 6
    scores = np.array([0.9, 0.5, 0.3, 0.5, 0.2])
    labels = np.array([1, 1, 1, 0, 0])
    assert metrics.auroc(scores, labels) == pytest.approx(0.75)


def test_auroc_extremes_and_single_class() -> None:
    assert metrics.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert metrics.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0])) == 0.0
    assert metrics.auroc(np.ones(6), np.array([0, 1, 0, 1, 1, 0])) == 0.5
    assert np.isnan(metrics.auroc(np.array([0.3, 0.4]), np.array([1, 1])))
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.auroc(np.array([0.3, 0.4]), np.array([1, -1]))


def test_auroc_matches_pair_loop_and_weights_match_duplication() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 40).astype(np.float64)  # many ties
    labels = rng.integers(0, 2, 40)
    assert metrics.auroc(scores, labels) == pytest.approx(_auroc_loop(scores, labels), abs=1e-12)
    weights = rng.integers(0, 4, size=(3, 40)).astype(np.float64)
    got = metrics.weighted_auroc(scores, labels, weights)
    for row, w in zip(got, weights):
        idx = np.repeat(np.arange(40), w.astype(int))
        assert row == pytest.approx(_auroc_loop(scores[idx], labels[idx]), abs=1e-12)


def test_multilabel_auroc_leaves_out_missing_labels() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.6]])
    labels = np.array([[1, 0], [0, np.nan], [1, 0], [0, 1]])
    got = metrics.weighted_multilabel_auroc(scores, labels)[0]
    assert got[0] == 1.0
    assert got[1] == pytest.approx(1.0)  # the NaN row (score 0.8) is dropped from column 1


def test_bootstrap_weights_are_resamples() -> None:
    w = metrics.bootstrap_weights(7, 50, seed=1)
    assert w.shape == (50, 7) and (w.sum(axis=1) == 7).all()
    assert np.array_equal(w, metrics.bootstrap_weights(7, 50, seed=1))
    assert not np.array_equal(w, metrics.bootstrap_weights(7, 50, seed=2))


def test_bootstrap_ci_contains_point_estimate() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = labels + rng.normal(0, 1.0, 200)
    point = metrics.auroc(scores, labels)
    low, high = metrics.bootstrap_ci(
        lambda w: metrics.weighted_auroc(scores, labels, w), 200, n_boot=500, seed=0
    )
    assert low < point < high
    assert 0.05 < high - low < 0.3  # n=200, AUROC ~0.76: the interval is about +-0.07
    # accuracy on a constant-correct set has a degenerate interval at the point estimate
    low, high = metrics.bootstrap_ci(
        lambda w: metrics.weighted_accuracy(np.ones(5), np.ones(5), w), 5, n_boot=100, seed=0
    )
    assert low == high == 1.0


def test_recall_with_relevance_sets_hand_case() -> None:
    # 3 queries x 4 candidates.
    sim = np.array(
        [
            [0.9, 0.8, 0.1, 0.0],  # relevant {1}: one irrelevant (0.9) above -> rank 2
            [0.1, 0.2, 0.3, 0.4],  # relevant {0, 2}: best relevant 0.3, irrelevant 0.4 above -> rank 2
            [0.5, 0.5, 0.5, 0.5],  # relevant {2}: a flat row -> every irrelevant ties -> rank 4
        ]
    )
    relevant = np.array(
        [[0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 0]],
        dtype=bool,
    )
    assert metrics.recall_at_k(sim, relevant, (1, 2, 3, 4)) == {1: 0.0, 2: 2 / 3, 3: 2 / 3, 4: 1.0}
    with pytest.raises(ValueError, match="no relevant"):
        metrics.recall_at_k(sim, np.zeros_like(relevant), (1,))


def test_recall_exact_pair_identity() -> None:
    sim = np.array([[0.9, 0.1, 0.0], [0.95, 0.9, 0.1], [0.2, 0.3, 0.1]])
    got = metrics.recall_at_k(sim, np.eye(3, dtype=bool), (1, 2))
    assert got == {1: 1 / 3, 2: 2 / 3}


def test_same_label_set() -> None:
    q = np.array([[1, 0, np.nan], [0, 0, 0]])
    c = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    assert metrics.same_label_set(q, c).tolist() == [[True, False, False], [False, False, True]]


def test_pointing_game_hand_case() -> None:
    maps = np.zeros((3, 3, 3))
    masks = np.zeros((3, 3, 3), dtype=bool)
    maps[0, 1, 1] = 1.0  # peak inside
    masks[0, 1, :] = True
    maps[1, 0, 0] = 1.0  # peak outside
    masks[1, 2, 2] = True
    masks[2, 2, 2] = True  # flat map: points at the top-left pixel -> miss
    assert metrics.pointing_hits(maps, masks).tolist() == [True, False, False]
    maps[0, 0, 2] = 1.0  # a tie: the first maximum in row-major order (0, 2) counts, outside the mask
    assert not metrics.pointing_hits(maps[:1], masks[:1])[0]


def test_threshold_and_iou_hand_case() -> None:
    maps = np.array([[[0.0, 1.0], [3.0, 4.0]], [[2.0, 2.0], [2.0, 2.0]]])
    pred = metrics.threshold_maps(maps, 0.5)  # normalised [0, .25, .75, 1] -> bottom row
    assert pred[0].tolist() == [[False, False], [True, True]]
    assert not pred[1].any()  # a flat map selects nothing
    masks = np.array([[[False, False], [False, True]], [[False, False], [False, False]]])
    assert metrics.iou(pred, masks).tolist() == [0.5, 1.0]


def test_accuracy() -> None:
    assert metrics.accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
    w = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    assert metrics.weighted_accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), w).tolist() == [1.0, 0.0]


def test_hub_share_and_centred_retrieval_hand_case() -> None:
    """A common offset makes one report every image's top-1 (a hub); centring removes it and finds the pairs."""
    from pipeline.eval.retrieval import centred, largest_top1_share, retrieval_metrics

    offset = np.array([0.0, 0.0, 1.0])
    signal = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    images = 10 * offset + signal  # mostly the common direction: small image-to-image differences
    reports = offset + signal
    reports[3] = offset  # the report without a signal of its own sits at the centre: every image's top-1
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    reports /= np.linalg.norm(reports, axis=1, keepdims=True)
    assert largest_top1_share(images, reports) == 1.0
    np.testing.assert_allclose(centred(images).mean(axis=0) @ np.ones(3), 0.0, atol=1e-12)
    labels = np.eye(4)
    got = retrieval_metrics(images, reports, ["a", "b", "c", "d"], labels, (1,), n_boot=20, seed=0, level=0.95)
    assert got["image_to_report"]["label_set"]["R@1"]["value"] == 0.25  # only image 3 finds its own report
    assert got["centred_label_set"]["image_to_report"]["R@1"] == 1.0
    assert got["largest_top1_share"]["image_to_report"] == 1.0 and got["chance_R@1_label_set"] == 0.25
