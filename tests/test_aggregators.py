"""Fold-ensemble and patient-level aggregation rules on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

import ichbench_plugins.aggregators as builtin_aggregators
from ichbench.errors import UsageError
from ichbench.interfaces import EnsembleRule, PatientRule
from ichbench.plugins import Plugins
from ichbench.registry import Registry

PROBS = np.array(
    [
        [0.10, 0.60, 0.40, 0.90],
        [0.20, 0.70, 0.45, 0.20],
        [0.30, 0.40, 0.55, 0.10],
    ]
)


@pytest.fixture(scope="module")
def registry() -> Registry:
    plugins = Plugins(load_entry_points=False)
    plugins.register(
        builtin_aggregators, name="ichbench_plugins.aggregators", distribution="ichbench"
    )
    return plugins.registry


def test_every_rule_is_registered_with_its_kind(registry):
    assert registry.names("ensemble") == [
        "calibrated-mean",
        "fold-votes",
        "majority",
        "max",
        "mean",
        "median",
    ]
    assert registry.names("patient") == [
        "any",
        "k-consecutive",
        "learned",
        "max-prob",
        "topk-mean",
    ]
    for name in registry.names("ensemble"):
        assert isinstance(registry.create("ensemble", name), EnsembleRule)
    for spec in ("any", "k-consecutive:2", "learned", "learned:2", "max-prob", "topk-mean:3"):
        assert isinstance(registry.create("patient", spec), PatientRule)


@pytest.mark.parametrize(
    "name, scores, decisions",
    [
        ("mean", [0.2, 0.5666667, 0.4666667, 0.4], [False, True, False, False]),
        ("median", [0.2, 0.6, 0.45, 0.2], [False, True, False, False]),
        ("max", [0.3, 0.7, 0.55, 0.9], [False, True, True, True]),
        ("majority", [0.0, 2 / 3, 1 / 3, 1 / 3], [False, True, False, False]),
    ],
)
def test_ensemble_rules(registry, name, scores, decisions):
    got_scores, got_decisions = registry.create("ensemble", name).combine(PROBS, 0.5)
    np.testing.assert_allclose(got_scores, scores, atol=1e-6)
    assert got_decisions.dtype == bool
    np.testing.assert_array_equal(got_decisions, decisions)


def test_mean_decision_includes_the_threshold_itself(registry):
    _, decisions = registry.create("ensemble", "mean").combine(np.array([[0.5, 0.49]]), 0.5)
    np.testing.assert_array_equal(decisions, [True, False])


def test_majority_needs_more_than_half(registry):
    two_folds = np.array([[0.9, 0.9], [0.1, 0.9]])
    scores, decisions = registry.create("ensemble", "majority").combine(two_folds, 0.5)
    np.testing.assert_allclose(scores, [0.5, 1.0])
    np.testing.assert_array_equal(decisions, [False, True])


def test_ensemble_rejects_a_wrong_shape(registry):
    with pytest.raises(UsageError, match=r"\(folds, slices\)"):
        registry.create("ensemble", "mean").combine(np.zeros((2, 2, 2)), 0.5)


SCORES = np.array([0.1, 0.7, 0.8, 0.2, 0.6, 0.65, 0.9, 0.3])
DECISIONS = SCORES >= 0.5


@pytest.mark.parametrize(
    "spec, score, decision",
    [
        ("any", 0.9, True),
        ("k-consecutive:2", 0.7, True),  # windows (0.7,0.8) and (0.6,0.65),(0.65,0.9): best min 0.7
        ("k-consecutive:3", 0.6, True),  # 0.6, 0.65, 0.9
        ("k-consecutive:4", 0.3, False),  # best window of 4: 0.6, 0.65, 0.9, 0.3
        ("topk-mean:2", 0.85, True),
        ("topk-mean:6", (0.9 + 0.8 + 0.7 + 0.65 + 0.6 + 0.3) / 6, True),
        ("topk-mean:8", SCORES.mean(), True),
        ("topk-mean:20", SCORES.mean(), True),  # fewer slices than K: all of them
        ("max-prob", 0.9, True),
    ],
)
def test_patient_rules(registry, spec, score, decision):
    got_score, got_decision = registry.create("patient", spec).decide(SCORES, DECISIONS, 0.5)
    assert got_score == pytest.approx(score)
    assert got_decision is decision


def test_any_follows_the_slice_decisions_not_the_scores(registry):
    # under the majority ensemble a slice may be positive with a score below the threshold
    score, decision = registry.create("patient", "any").decide(
        np.array([0.2, 0.4]), np.array([False, True]), 0.5
    )
    assert (score, decision) == (0.4, True)
    score, decision = registry.create("patient", "max-prob").decide(
        np.array([0.2, 0.4]), np.array([False, True]), 0.5
    )
    assert (score, decision) == (0.4, False)


def test_topk_mean_can_be_negative_with_a_positive_slice(registry):
    scores = np.array([0.1, 0.55, 0.2, 0.3])
    assert registry.create("patient", "topk-mean:2").decide(scores, scores >= 0.5, 0.5) == (
        pytest.approx(0.425),
        False,
    )


def test_k_consecutive_needs_consecutive_slices(registry):
    rule = registry.create("patient", "k-consecutive:2")
    alternating = np.array([0.9, 0.1, 0.9, 0.1, 0.9])
    assert rule.decide(alternating, alternating >= 0.5, 0.5) == (0.1, False)


def test_k_consecutive_with_fewer_slices_than_k(registry):
    rule = registry.create("patient", "k-consecutive:5")
    scores = np.array([0.9, 0.8, 0.7])
    assert rule.decide(scores, scores >= 0.5, 0.5) == (pytest.approx(0.7), False)


@pytest.mark.parametrize("spec", ["any", "k-consecutive:2", "topk-mean:3", "max-prob"])
def test_patient_without_slices_is_negative(registry, spec):
    assert registry.create("patient", spec).decide(np.zeros(0), np.zeros(0, bool), 0.5) == (
        0.0,
        False,
    )


def test_patient_rules_reject_mismatched_inputs(registry):
    with pytest.raises(UsageError, match="3 scores and 2 decisions"):
        registry.create("patient", "any").decide(np.zeros(3), np.zeros(2, bool), 0.5)


@pytest.mark.parametrize(
    "kind, spec, message",
    [
        (
            "patient",
            "k-consecutive",
            "k-consecutive: got 'k-consecutive'; expected k-consecutive:K",
        ),
        ("patient", "k-consecutive:0", "k-consecutive: 0 must be >= 1"),
        ("patient", "k-consecutive:1.5", "k-consecutive: '1.5' is not an integer"),
        ("patient", "topk-mean:x", "topk-mean: 'x' is not an integer; expected topk-mean:K"),
        ("patient", "topk-mean:-1", "topk-mean: -1 must be >= 1"),
        ("patient", "any:2", "any: got 'any:2'; expected any (no arguments)"),
        ("patient", "max-prob:0.5", "expected max-prob (no arguments)"),
        ("ensemble", "mean:3", "mean: got 'mean:3'; expected mean (no arguments)"),
        ("ensemble", "majority:0.6", "expected majority (no arguments)"),
    ],
)
def test_bad_arguments(registry, kind, spec, message):
    with pytest.raises(UsageError) as info:
        registry.create(kind, spec)
    assert message in str(info.value)


def test_fold_votes_cuts_each_fold_at_its_own_threshold(registry):
    rule = registry.create("ensemble", "fold-votes")
    assert rule.per_fold_thresholds
    probs = np.array([[0.05, 0.02, 0.30], [0.95, 0.70, 0.90]])  # fold 0 timid, fold 1 bold
    scores, decisions = rule.combine(probs, np.array([0.04, 0.80]))
    assert scores.tolist() == [1.0, 0.0, 1.0] and decisions.tolist() == [True, False, True]
    # the shared-threshold majority at 0.5 sees only the bold fold: no majority anywhere
    _, shared = registry.create("ensemble", "majority").combine(probs, 0.5)
    assert shared.tolist() == [False, False, False]


def test_calibrated_mean_takes_a_calibrator_kind(registry):
    from ichbench.errors import UsageError

    assert registry.create("ensemble", "calibrated-mean").kind == "isotonic"
    rule = registry.create("ensemble", "calibrated-mean:temperature")
    assert rule.kind == "temperature" and rule.calibrates_folds
    with pytest.raises(UsageError, match="calibrated-mean:platt: expected one of"):
        registry.create("ensemble", "calibrated-mean:platt")
