"""Calibration measures against scikit-learn and hand-worked cases; calibrators fitted on
one sample and judged on another."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss

from ichbench.calibration import (
    CALIBRATORS,
    TEMPERATURE_BOUNDS,
    Calibrator,
    bin_index,
    brier,
    ece,
    fit_calibrator,
    nll,
    reliability,
)
from ichbench.errors import UsageError


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def calibrated_sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn as Bernoulli(p): p is calibrated by construction."""
    p = rng.random(n)
    return (rng.random(n) < p).astype(int), p


def over_confident_sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The calibrated sample's logits tripled: right ranking, probabilities too extreme."""
    labels, p = calibrated_sample(rng, n)
    return labels, _sigmoid(3 * _logit(np.clip(p, 1e-6, 1 - 1e-6)))


def reference_ece(labels: np.ndarray, probs: np.ndarray, n_bins: int) -> float:
    """ECE from scikit-learn's calibration_curve, which drops empty bins and puts a
    probability on an interior edge in the bin below it."""
    prob_true, prob_pred = calibration_curve(labels, probs, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], probs), minlength=n_bins)
    counts = counts[counts > 0]
    return float(np.sum(counts * np.abs(prob_true - prob_pred)) / counts.sum())


# --------------------------------------------------------------------------- measures


def test_brier_is_sklearns():
    rng = np.random.default_rng(0)
    labels, probs = calibrated_sample(rng, 500)
    assert brier(labels, probs) == pytest.approx(brier_score_loss(labels, probs))
    assert brier([1, 1], [0.9, 0.8]) == pytest.approx(0.025)  # one class is fine
    assert brier([0, 0], [0.9, 0.8]) == pytest.approx(0.725)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_matches_calibration_curve_where_the_definitions_agree(n_bins):
    rng = np.random.default_rng(n_bins)
    # probabilities in [0.2, 0.7): some bins empty, and none exactly on an edge, where the
    # two binnings differ (see test_a_probability_on_an_edge_goes_to_the_bin_above)
    probs = 0.2 + 0.5 * rng.random(3000)
    labels = (rng.random(3000) < probs**2).astype(int)
    assert not np.isin(probs, np.arange(n_bins + 1) / n_bins).any()
    assert (reliability(labels, probs, n_bins).counts == 0).any()
    assert ece(labels, probs, n_bins) == pytest.approx(reference_ece(labels, probs, n_bins))


def test_ece_by_hand():
    probs = [0.05, 0.15, 0.15, 0.85, 0.95, 1.0]
    labels = [0, 0, 1, 1, 1, 1]
    # bins 0: |0 - 0.05| x1, 1: |0.5 - 0.15| x2, 8: |1 - 0.85| x1, 9: |1 - 0.975| x2
    expected = (0.05 + 2 * 0.35 + 0.15 + 2 * 0.025) / 6
    assert ece(labels, probs) == pytest.approx(expected)
    assert ece([0, 1], [0.5, 0.5]) == pytest.approx(0.0)  # a coin at the prevalence


def test_a_probability_on_an_edge_goes_to_the_bin_above():
    assert bin_index([0.0, 0.3, 0.29999, 0.5, 1.0], 10).tolist() == [0, 3, 2, 5, 9]
    assert bin_index([0.29, 0.57, 0.99, 1.0], 100).tolist() == [29, 57, 99, 99]
    # [0.5, 1] holds both 0.5s: (2 * |1 - 0.5| + |0 - 0.4|) / 3; scikit-learn's bins,
    # closed on the right, would put all three in [0, 0.5]
    assert ece([1, 1, 0], [0.5, 0.5, 0.4], n_bins=2) == pytest.approx(1.4 / 3)
    assert reference_ece(np.array([1, 1, 0]), np.array([0.5, 0.5, 0.4]), 2) == pytest.approx(0.2)


def test_reliability_keeps_every_bin():
    labels = [0, 1, 1, 0]
    probs = [0.12, 0.18, 0.91, 0.97]
    rel = reliability(labels, probs, n_bins=5)
    np.testing.assert_allclose(rel.edges, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(rel.centres, [0.1, 0.3, 0.5, 0.7, 0.9])
    assert rel.counts.tolist() == [2, 0, 0, 0, 2]
    np.testing.assert_allclose(rel.mean_predicted[[0, 4]], [0.15, 0.94])
    np.testing.assert_allclose(rel.observed[[0, 4]], [0.5, 0.5])
    assert np.isnan(rel.mean_predicted[1:4]).all() and np.isnan(rel.observed[1:4]).all()
    assert rel.ece == pytest.approx((2 * 0.35 + 2 * 0.44) / 4)


def test_calibrated_sample_has_small_ece_and_over_confident_one_large():
    rng = np.random.default_rng(0)
    assert ece(*calibrated_sample(rng, 20000)) < 0.02
    assert ece(*over_confident_sample(rng, 20000)) > 0.1


@pytest.mark.parametrize(
    "labels,probs",
    [([], []), ([0, 1], [0.5]), ([0, 2], [0.1, 0.2]), ([0, 1], [0.1, 1.2]), ([0], [np.nan])],
)
def test_bad_inputs_are_usage_errors(labels, probs):
    for measure in (brier, ece, nll, reliability):
        with pytest.raises(UsageError):
            measure(labels, probs)


@pytest.mark.parametrize("n_bins", [0, -1, 2.5, True])
def test_bad_bin_counts_are_usage_errors(n_bins):
    with pytest.raises(UsageError, match="n_bins"):
        ece([0, 1], [0.2, 0.8], n_bins=n_bins)


# --------------------------------------------------------------------------- calibrators


def test_temperature_scaling_helps_on_held_out_data():
    rng = np.random.default_rng(1)
    fit_labels, fit_probs = over_confident_sample(rng, 5000)
    held_labels, held_probs = over_confident_sample(rng, 5000)
    cal = fit_calibrator("temperature", fit_labels, fit_probs)
    assert 2.5 < cal.params["temperature"] < 3.5  # the logits were tripled
    assert cal.fallback is None
    after = cal.apply(held_probs)
    assert nll(held_labels, after) < nll(held_labels, held_probs) - 0.1
    assert ece(held_labels, after) < 0.03 < 0.1 < ece(held_labels, held_probs)
    order = np.argsort(held_probs)
    assert np.all(np.diff(after[order]) >= 0)  # the ranking is kept (ties at EPS aside)


def test_temperature_on_separable_data_stops_at_the_bound():
    cal = fit_calibrator("temperature", [0, 0, 1, 1], [0.2, 0.3, 0.7, 0.8])
    assert cal.params["temperature"] == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-3)


def test_isotonic_is_monotone_within_unit_interval_and_helps_on_held_out_data():
    rng = np.random.default_rng(2)
    fit_labels, fit_probs = over_confident_sample(rng, 5000)
    held_labels, held_probs = over_confident_sample(rng, 5000)
    cal = fit_calibrator("isotonic", fit_labels, fit_probs)
    grid = np.linspace(0, 1, 1001)
    out = cal.apply(grid)
    assert np.all(np.diff(out) >= 0)
    assert out.min() >= 0 and out.max() <= 1
    assert ece(held_labels, cal.apply(held_probs)) < ece(held_labels, held_probs) / 3
    sk = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(fit_probs, fit_labels)
    np.testing.assert_allclose(out, sk.predict(grid), atol=1e-12)


@pytest.mark.parametrize("kind", CALIBRATORS)
def test_from_params_round_trips_exactly_through_json(kind):
    rng = np.random.default_rng(3)
    labels, probs = over_confident_sample(rng, 2000)
    cal = fit_calibrator(kind, labels, probs)
    stored = json.loads(json.dumps(cal.params))
    rebuilt = Calibrator.from_params(kind, stored)
    assert rebuilt == cal
    grid = np.concatenate([np.linspace(0, 1, 1001), probs])
    np.testing.assert_array_equal(rebuilt.apply(grid), cal.apply(grid))


def test_an_unknown_kind_is_named_with_the_choices():
    with pytest.raises(UsageError, match=r"'platt'.*temperature, isotonic"):
        fit_calibrator("platt", [0, 1], [0.2, 0.8])
    with pytest.raises(UsageError, match=r"'platt'.*temperature, isotonic"):
        Calibrator.from_params("platt", {})


@pytest.mark.parametrize(
    "kind,params",
    [
        ("temperature", {}),
        ("temperature", {"temperature": 0}),
        ("temperature", {"temperature": "2"}),
        ("isotonic", {"x": [0.0, 1.0]}),
        ("isotonic", {"x": [0.0, 1.0], "y": [0.5]}),
        ("isotonic", {"x": [1.0, 0.0], "y": [0.0, 1.0]}),
        ("isotonic", {"x": [0.0, 1.0], "y": [0.0, 1.5]}),
        ("isotonic", {"x": [], "y": []}),
    ],
)
def test_bad_params_are_usage_errors(kind, params):
    with pytest.raises(UsageError, match=kind):
        Calibrator.from_params(kind, params)


@pytest.mark.parametrize("kind", CALIBRATORS)
def test_no_predictions_is_a_usage_error(kind):
    with pytest.raises(UsageError, match="at least one prediction"):
        fit_calibrator(kind, [], [])


@pytest.mark.parametrize("kind", CALIBRATORS)
@pytest.mark.parametrize("label", [0, 1])
def test_one_class_falls_back_to_the_identity(kind, label):
    probs = np.array([0.1, 0.4, 0.9])
    cal = fit_calibrator(kind, [label] * 3, probs)
    assert cal.kind == kind
    assert "all " + ("positive" if label else "negative") in cal.fallback
    np.testing.assert_allclose(cal.apply(probs), probs, atol=1e-12)
    rebuilt = Calibrator.from_params(kind, json.loads(json.dumps(cal.params)))
    assert rebuilt.fallback == cal.fallback


def test_apply_rejects_probabilities_outside_the_unit_interval():
    cal = Calibrator("temperature", {"temperature": 2.0})
    with pytest.raises(UsageError):
        cal.apply([0.5, 1.5])
    np.testing.assert_allclose(cal.apply([0.0, 0.5, 1.0]), [0.0, 0.5, 1.0], atol=1e-3)
