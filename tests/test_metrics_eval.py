"""Evaluation metrics against scikit-learn, and the bootstrap interval's contract."""
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from cmgl_dist.evaluate.metrics import (auc, bootstrap_aucs, finding_set_precision, recall_at_k, recall_chance,
                                      roc_points)

NAMES = ("a", "b", "c")


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.random((n, 3)) < [0.5, 0.2, 0.05]
    # informative scores with heavy ties (rounded), so ties are exercised
    scores = np.round(labels * rng.uniform(0.2, 1.0, (n, 3)) + rng.normal(0, 0.5, (n, 3)), 1)
    return labels, scores


def test_auc_matches_sklearn_with_ties():
    labels, scores = _data()
    for c in range(3):
        assert auc(labels[:, c], scores[:, c]) == pytest.approx(roc_auc_score(labels[:, c], scores[:, c]), abs=1e-12)
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auc_of_a_single_class_is_nan():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_roc_points_match_sklearn():
    labels, scores = _data()
    fpr, tpr = roc_points(labels[:, 0], scores[:, 0])
    sk_fpr, sk_tpr, _ = roc_curve(labels[:, 0], scores[:, 0], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(labels[:, 0], scores[:, 0]))


def test_bootstrap_contains_point_and_is_deterministic_per_seed():
    labels, scores = _data()
    first = bootstrap_aucs(labels, scores, NAMES, n_boot=300, seed=7)
    again = bootstrap_aucs(labels, scores, NAMES, n_boot=300, seed=7)
    other = bootstrap_aucs(labels, scores, NAMES, n_boot=300, seed=8)
    for name in NAMES + ("mean",):
        cell = first[name]
        assert cell.low <= cell.value <= cell.high
        assert cell == again[name]
    assert first["a"].low != other["a"].low
    assert first["mean"].value == pytest.approx(np.mean([roc_auc_score(labels[:, c], scores[:, c]) for c in range(3)]))
    assert first["n_pos"] == {n: int(labels[:, c].sum()) for c, n in enumerate(NAMES)}
    assert first["a"].skipped == 0
    # fewer positives, wider interval: the rare class (~10 of 200) against the common one (~100)
    assert first["c"].high - first["c"].low > first["a"].high - first["a"].low


def test_bootstrap_counts_resamples_without_a_positive():
    labels = np.zeros((20, 3), bool)
    labels[:, 0] = np.arange(20) < 10
    labels[:, 1] = np.arange(20) < 10
    labels[0, 2] = True  # one positive: ~36% of resamples miss it
    scores = np.random.default_rng(0).random((20, 3))
    out = bootstrap_aucs(labels, scores, NAMES, n_boot=500, seed=0)
    assert 100 < out["c"].skipped < 260
    assert out["mean"].skipped == out["c"].skipped
    assert out["mean_over"] == list(NAMES)


def test_class_without_positives_is_left_out_of_the_mean():
    labels, scores = _data()
    labels[:, 2] = False
    out = bootstrap_aucs(labels, scores, NAMES, n_boot=100, seed=0)
    assert math.isnan(out["c"].value) and math.isnan(out["c"].low)
    assert out["mean_over"] == ["a", "b"]
    assert out["mean"].value == pytest.approx((out["a"].value + out["b"].value) / 2)


def test_bootstrap_rejects_mismatched_shapes():
    labels, scores = _data()
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        bootstrap_aucs(labels, scores[:, :2], NAMES)


def test_recall_at_k():
    sim = np.array([[0.9, 0.1, 0.0],    # correct first
                    [0.8, 0.5, 0.1],    # correct second
                    [0.7, 0.6, 0.2]])   # correct third
    assert recall_at_k(sim, (1, 2, 3)) == {"R@1": pytest.approx(1 / 3), "R@2": pytest.approx(2 / 3), "R@3": 1.0}
    with pytest.raises(ValueError, match="square"):
        recall_at_k(sim[:2])


def test_recall_chance_is_k_over_n():
    assert recall_chance(776) == {"R@1": pytest.approx(1 / 776), "R@5": pytest.approx(5 / 776),
                                  "R@10": pytest.approx(10 / 776)}
    assert recall_chance(4, (1, 10))["R@10"] == 1.0


def test_finding_set_precision_counts_equal_label_rows_and_its_chance():
    sets = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], bool)
    # query 0 ranks 1, 0 first (both {a}); query 2 ranks 3 then 2; others rank in index order
    sim = np.array([[5, 9, 1, 0], [3, 2, 1, 0], [0, 0, 1, 2], [0, 0, 0, 1]], float)
    precision, chance = finding_set_precision(sim, sets, sets, k=2)
    assert precision == pytest.approx(np.mean([2 / 2, 2 / 2, 1 / 2, 1 / 2]))
    assert chance == pytest.approx(np.mean([2 / 4, 2 / 4, 1 / 4, 1 / 4]))
    with pytest.raises(ValueError, match="does not match"):
        finding_set_precision(sim[:3], sets, sets)


def test_finding_set_precision_of_random_scores_sits_at_chance():
    rng = np.random.default_rng(0)
    sets = rng.random((600, 3)) < [0.5, 0.2, 0.1]
    precision, chance = finding_set_precision(rng.random((600, 600)), sets, sets, k=10)
    assert abs(precision - chance) < 0.03
    same = (sets[:, None] == sets[None]).all(-1)
    perfect, _ = finding_set_precision(same.astype(float), sets, sets)
    assert perfect == pytest.approx(np.minimum(same.sum(1), 10).mean() / 10)  # rare sets have < 10 members
