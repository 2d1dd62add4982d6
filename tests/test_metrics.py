"""Metrics against scikit-learn on hand-made cases, and the voting threshold."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from ichbench.metrics import bootstrap_ci, patient_metrics, point_metrics, slice_metrics, wilson
from ichbench.vote import THRESHOLDS, best_threshold, f1_curve, voting_threshold


def test_point_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1)
    decisions = scores >= 0.5
    m = point_metrics(labels, decisions, scores)
    assert m["sensitivity"] == pytest.approx(recall_score(labels, decisions))
    assert m["specificity"] == pytest.approx(recall_score(1 - labels, ~decisions))
    assert m["precision"] == pytest.approx(precision_score(labels, decisions))
    assert m["f1"] == pytest.approx(f1_score(labels, decisions))
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, decisions))
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == 200


def test_hand_made_confusion():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    decisions = np.array([1, 1, 0, 1, 0, 0, 0])
    m = point_metrics(labels, decisions)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["auc"] is None  # no scores given


def test_undefined_metrics_are_none_not_zero():
    m = point_metrics(np.zeros(5), np.zeros(5), np.linspace(0, 1, 5))
    assert m["sensitivity"] is None and m["precision"] is None and m["auc"] is None
    assert m["specificity"] == 1.0


def test_wilson_interval_known_value():
    lo, hi = wilson(8, 10)  # textbook: 0.490 - 0.943
    assert lo == pytest.approx(0.4902, abs=1e-3)
    assert hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0) == (None, None)


def test_bootstrap_auc_matches_sklearn_on_identity_resample():
    # with one draw per group and every group drawn once, the weighted AUC is the AUC
    from ichbench.metrics import weighted_auc

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 50)
    scores = np.round(rng.random(50), 1)  # ties on purpose
    uniq, vi = np.unique(scores, return_inverse=True)
    pos = np.bincount(vi[labels == 1], minlength=len(uniq))[None, :].astype(float)
    neg = np.bincount(vi[labels == 0], minlength=len(uniq))[None, :].astype(float)
    assert weighted_auc(pos, neg)[0] == pytest.approx(roc_auc_score(labels, scores))


def test_bootstrap_interval_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(20), 10)
    labels = (rng.random(200) < 0.3).astype(int)
    scores = np.clip(labels * 0.4 + rng.random(200) * 0.6, 0, 1)
    decisions = scores >= 0.5
    row = slice_metrics("fold", 0, "test", 0.5, labels, scores, decisions, groups)
    for name in ("sensitivity", "specificity", "f1", "auc"):
        lo, hi = row.ci[name]
        assert lo <= getattr(row, name) <= hi
    again = bootstrap_ci(labels, decisions, scores, groups)
    assert again == row.ci


def test_patient_metrics_use_wilson():
    labels = np.array([1, 1, 1, 0, 0])
    decisions = np.array([1, 1, 1, 1, 0])
    row = patient_metrics("vote", None, "test", 0.4, labels, labels * 0.9, decisions)
    assert row.sensitivity == 1.0
    assert row.ci["sensitivity"] == pytest.approx(wilson(3, 3))
    assert row.ci_method == "wilson+bootstrap"


def test_f1_curve_matches_sklearn_at_every_threshold():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 120)
    probs = rng.random(120)
    curve = f1_curve(labels, probs)
    assert curve.shape == (101,)
    for i in (0, 13, 50, 77, 100):
        expected = f1_score(labels, probs >= THRESHOLDS[i], zero_division=0)
        assert curve[i] == pytest.approx(expected)


def test_voting_threshold_is_argmax_of_mean_curve():
    a = np.zeros(101)
    a[30], a[50] = 1.0, 0.8
    b = np.zeros(101)
    b[70], b[50] = 1.0, 0.8
    threshold, mean = voting_threshold([a, b])
    assert best_threshold(a) == 0.30 and best_threshold(b) == 0.70
    assert threshold == 0.50  # neither fold's own choice: the mean curve peaks there
    assert mean[50] == pytest.approx(0.8)
