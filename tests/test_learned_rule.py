"""The learned patient rule and the patient features it learns from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

import ichbench_plugins.aggregators as builtin_aggregators
from ichbench.errors import UsageError
from ichbench.interfaces import PatientRule
from ichbench.patient_features import (
    FEATURE_NAMES,
    PatientSlices,
    features_matrix,
    patient_features,
)
from ichbench.plugins import Plugins
from ichbench.registry import Registry
from ichbench.vote import THRESHOLDS

FITTED_KEYS = {
    "rule",
    "k",
    "features",
    "slice_threshold",
    "n_ich",
    "n_healthy",
    "coefficients",
    "intercept",
    "scaler_mean",
    "scaler_scale",
    "probability_threshold",
    "fit_f1",
    "fallback",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    plugins = Plugins(load_entry_points=False)
    plugins.register(
        builtin_aggregators, name="ichbench_plugins.aggregators", distribution="ichbench"
    )
    return plugins.registry


def _patient(rng: np.random.Generator, ich: bool, threshold: float = 0.5) -> PatientSlices:
    """A healthy patient has low scores with now and then one stray high slice; an ICH
    patient has a run of 3 to 6 high slices somewhere in the stack."""
    n = int(rng.integers(20, 40))
    scores = rng.uniform(0.0, 0.35, n)
    if ich:
        length = int(rng.integers(3, 7))
        start = int(rng.integers(0, n - length))
        scores[start : start + length] = rng.uniform(0.6, 0.95, length)
    elif rng.random() < 0.5:
        scores[int(rng.integers(0, n))] = rng.uniform(0.6, 0.95)
    return PatientSlices(scores, scores >= threshold, int(ich))


def _cohort(seed: int, n_ich: int, n_healthy: int) -> list[PatientSlices]:
    rng = np.random.default_rng(seed)
    return [_patient(rng, True) for _ in range(n_ich)] + [
        _patient(rng, False) for _ in range(n_healthy)
    ]


def _decide_all(rule, patients) -> tuple[np.ndarray, np.ndarray]:
    out = [rule.decide(p.scores, p.decisions, 0.5) for p in patients]
    return np.array([s for s, _ in out]), np.array([d for _, d in out])


# --------------------------------------------------------------------------- features


def test_features_by_hand():
    got = patient_features(np.array([0.1, 0.9, 0.8, 0.2]), np.array([0, 1, 1, 0], bool), 2)
    np.testing.assert_allclose(got, [0.9, 0.85, 2, 2, 1 / 3])
    assert len(got) == len(FEATURE_NAMES)


def test_features_of_short_and_empty_patients():
    np.testing.assert_allclose(
        patient_features(np.array([0.7]), np.array([True]), 3), [0.7, 0.7, 1, 1, 0.5]
    )
    np.testing.assert_allclose(
        patient_features(np.array([0.2, 0.6]), np.array([False, True]), 5),
        [0.6, 0.4, 1, 1, 1.0],
    )
    np.testing.assert_array_equal(patient_features(np.zeros(0), np.zeros(0, bool), 3), 0)


def test_longest_run_counts_consecutive_flags_only():
    flags = np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)
    assert patient_features(np.linspace(0, 1, 8), flags, 3)[3] == 3


def test_features_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="3 scores and 2 decisions"):
        patient_features(np.zeros(3), np.zeros(2, bool), 3)
    with pytest.raises(ValueError, match="3 scores and 2 decisions"):
        PatientSlices(np.zeros(3), np.zeros(2, bool), 1)
    with pytest.raises(ValueError, match="0 .healthy. or 1 .ICH."):
        PatientSlices(np.zeros(1), np.zeros(1, bool), 2)


_patients = st.lists(
    st.lists(st.tuples(st.floats(0, 1), st.booleans()), max_size=12).map(
        lambda slices: PatientSlices(
            np.array([s for s, _ in slices], dtype=float),
            np.array([d for _, d in slices], dtype=bool),
            0,
        )
    ),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(patients=_patients, k=st.integers(1, 5))
def test_matrix_agrees_with_one_patient_at_a_time(patients, k):
    matrix = features_matrix(patients, k)
    assert matrix.shape == (len(patients), len(FEATURE_NAMES))
    for row, p in zip(matrix, patients):
        np.testing.assert_allclose(row, patient_features(p.scores, p.decisions, k))


# --------------------------------------------------------------------------- the rule


def test_learned_is_registered_and_fits(registry):
    assert "learned" in registry.names("patient")
    rule = registry.create("patient", "learned")
    assert isinstance(rule, PatientRule)
    assert rule.fits is True and rule.k == 3
    assert registry.create("patient", "learned:5").k == 5


@pytest.mark.parametrize("spec", ["learned:0", "learned:x", "learned:1,2", "learned:1001"])
def test_bad_specs_name_the_form(registry, spec):
    with pytest.raises(UsageError) as info:
        registry.create("patient", spec)
    assert str(info.value).startswith("learned: ")
    assert "expected learned[:K] with K an integer from 1 to 1000" in str(info.value)


def test_unfitted_rule_refuses_to_decide(registry):
    with pytest.raises(UsageError, match="must be fitted first"):
        registry.create("patient", "learned").decide(np.ones(3), np.ones(3, bool), 0.5)


def test_fit_separates_runs_from_stray_slices_and_leaves_the_rule_unfitted(registry):
    rule = registry.create("patient", "learned")
    fitted = rule.fit(_cohort(0, 20, 20), 0.5)
    with pytest.raises(UsageError, match="must be fitted first"):
        rule.decide(np.ones(3), np.ones(3, bool), 0.5)
    assert not hasattr(rule, "fitted")
    assert isinstance(fitted, PatientRule)

    unseen = _cohort(1, 15, 15)
    labels = np.array([p.label for p in unseen])
    scores, decisions = _decide_all(fitted, unseen)
    assert np.all((scores >= 0) & (scores <= 1))
    assert scores[labels == 1].min() > scores[labels == 0].max()
    assert f1_score(labels, decisions) >= 0.9
    # the paper's rule calls every healthy patient with a stray slice ICH
    _, any_decisions = _decide_all(registry.create("patient", "any"), unseen)
    assert f1_score(labels, decisions) > f1_score(labels, any_decisions)


def test_fitted_summary_is_json_and_complete(registry):
    fitted = registry.create("patient", "learned:2").fit(_cohort(2, 12, 9), 0.5)
    summary = json.loads(json.dumps(fitted.fitted))
    assert set(summary) == FITTED_KEYS
    assert summary["fallback"] is None
    assert summary["features"] == list(FEATURE_NAMES)
    assert summary["rule"] == "learned:2" and summary["k"] == 2
    assert (summary["n_ich"], summary["n_healthy"]) == (12, 9)
    assert summary["slice_threshold"] == 0.5
    for key in ("coefficients", "scaler_mean", "scaler_scale"):
        assert len(summary[key]) == len(FEATURE_NAMES)
    assert isinstance(summary["intercept"], float)
    assert summary["probability_threshold"] in THRESHOLDS


def test_fitted_threshold_maximises_patient_f1_on_its_patients(registry):
    patients = _cohort(3, 10, 14)
    # blur the classes so the cut matters: some ICH patients look healthy and back
    rng = np.random.default_rng(4)
    patients += [_patient(rng, ich=False) for _ in range(3)]
    patients += [PatientSlices(p.scores, p.decisions, 1) for p in _cohort(5, 0, 3)]
    fitted = registry.create("patient", "learned").fit(patients, 0.5)
    labels = np.array([p.label for p in patients])
    scores = np.array([fitted.decide(p.scores, p.decisions, 0.5)[0] for p in patients])
    f1 = np.array([f1_score(labels, scores >= t, zero_division=0) for t in THRESHOLDS])
    best = f1.max()
    lowest_best = float(THRESHOLDS[np.flatnonzero(np.isclose(f1, best))[0]])
    assert fitted.fitted["probability_threshold"] == lowest_best
    assert fitted.fitted["fit_f1"] == pytest.approx(best)
    _, decisions = _decide_all(fitted, patients)
    np.testing.assert_array_equal(decisions, scores >= lowest_best)


def test_fit_is_deterministic(registry):
    patients = _cohort(6, 10, 10)
    first = registry.create("patient", "learned").fit(patients, 0.5)
    second = registry.create("patient", "learned").fit(patients, 0.5)
    assert first.fitted == second.fitted


@pytest.mark.parametrize("n_ich, n_healthy", [(0, 10), (10, 0), (1, 10), (10, 1), (0, 0)])
def test_too_few_of_a_class_falls_back_to_any(registry, n_ich, n_healthy):
    patients = _cohort(7, n_ich, n_healthy)
    fitted = registry.create("patient", "learned").fit(patients, 0.5)
    summary = json.loads(json.dumps(fitted.fitted))
    assert "behaves like 'any'" in summary["fallback"]
    assert (summary["n_ich"], summary["n_healthy"]) == (n_ich, n_healthy)
    assert summary["coefficients"] is None and summary["probability_threshold"] is None
    any_rule = registry.create("patient", "any")
    for p in _cohort(8, 5, 5) + [PatientSlices(np.zeros(0), np.zeros(0, bool), 0)]:
        assert fitted.decide(p.scores, p.decisions, 0.5) == any_rule.decide(
            p.scores, p.decisions, 0.5
        )


def test_fitted_rule_treats_a_patient_without_slices_as_negative(registry):
    fitted = registry.create("patient", "learned").fit(_cohort(9, 8, 8), 0.5)
    assert fitted.decide(np.zeros(0), np.zeros(0, bool), 0.5) == (0.0, False)
    with pytest.raises(UsageError, match="3 scores and 2 decisions"):
        fitted.decide(np.zeros(3), np.zeros(2, bool), 0.5)
