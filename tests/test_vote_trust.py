"""The vote-trust flags on constructed cases, and the vote's collapse reproduced on
synthetic folds whose probabilities live on different scales."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, recall_score

from ichbench.calibration import Calibrator, fit_calibrator
from ichbench.errors import UsageError
from ichbench.vote import best_threshold, f1_curve, voting_threshold
from ichbench.vote_trust import (
    EDGE_HIGH,
    EDGE_LOW,
    MAX_THRESHOLD_SPREAD,
    WORSE_MARGIN,
    VoteWarning,
    calibrated_mean,
    fold_votes,
    out_of_fold_f1,
    vote_warnings,
)

HEALTHY = dict(
    fold_thresholds=[0.42, 0.48, 0.55, 0.39, 0.51],
    fold_val_f1=[0.81, 0.84, 0.79, 0.86, 0.83],
    vote_threshold=0.47,
    vote_oof_val_f1=0.82,
)


def codes(warnings: list[VoteWarning]) -> list[str]:
    return [w.code for w in warnings]


def test_a_healthy_vote_raises_nothing():
    assert vote_warnings(**HEALTHY) == []


def test_worse_than_every_fold():
    found = vote_warnings(**{**HEALTHY, "vote_oof_val_f1": 0.73})
    assert codes(found) == ["worse-than-every-fold"]
    assert "0.73" in found[0].message and "0.79-0.86" in found[0].message


@pytest.mark.parametrize("oof", [0.79, 0.76, 0.74])
def test_within_the_margin_of_the_worst_fold_is_not_worse(oof):
    assert WORSE_MARGIN == 0.05
    assert vote_warnings(**{**HEALTHY, "vote_oof_val_f1": oof}) == []


@pytest.mark.parametrize("low,high", [(0.3, 0.8), (0.0, 0.5), (0.49, 0.99), (0.1, 0.6)])
def test_a_spread_of_exactly_the_limit_does_not_flag(low, high):
    assert MAX_THRESHOLD_SPREAD == 0.5
    thresholds = [low, high, (low + high) / 2, low, high]
    assert vote_warnings(**{**HEALTHY, "fold_thresholds": thresholds}) == []


def test_a_spread_beyond_the_limit_flags():
    found = vote_warnings(**{**HEALTHY, "fold_thresholds": [0.3, 0.81, 0.5, 0.5, 0.5]})
    assert codes(found) == ["thresholds-spread"]
    assert "0.30-0.81" in found[0].message and "0.51" in found[0].message


@pytest.mark.parametrize("threshold", [0.0, 0.01, 0.99, 1.0])
def test_a_vote_threshold_at_the_edge_flags(threshold):
    assert (EDGE_LOW, EDGE_HIGH) == (0.01, 0.99)
    found = vote_warnings(**{**HEALTHY, "vote_threshold": threshold})
    assert codes(found) == ["threshold-at-edge"]
    assert f"{threshold:.2f}" in found[0].message


@pytest.mark.parametrize("threshold", [0.02, 0.98])
def test_a_vote_threshold_inside_the_edges_does_not_flag(threshold):
    assert vote_warnings(**{**HEALTHY, "vote_threshold": threshold}) == []


def test_messages_are_one_line_and_name_both_remedies():
    found = vote_warnings([0.05, 0.96, 0.97], [0.87, 0.88, 0.9], 0.99, 0.4)
    assert codes(found) == ["worse-than-every-fold", "thresholds-spread", "threshold-at-edge"]
    for warning in found:
        assert "\n" not in warning.message
        assert "--ensemble fold-votes" in warning.message


@pytest.mark.parametrize(
    "thresholds,f1s", [([0.5, 0.5], [0.8]), ([], []), ([0.5, float("nan")], [0.8, 0.8])]
)
def test_bad_summaries_are_usage_errors(thresholds, f1s):
    with pytest.raises(UsageError):
        vote_warnings(thresholds, f1s, 0.5, 0.8)


def test_out_of_fold_f1_pools_the_validation_slices():
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, 2, n) for n in (30, 40, 25)]
    probs = [rng.random(n) for n in (30, 40, 25)]
    pooled = f1_score(np.concatenate(labels), np.concatenate(probs) >= 0.4)
    assert out_of_fold_f1(labels, probs, 0.4) == pytest.approx(pooled)
    assert out_of_fold_f1([np.zeros(3)], [np.zeros(3)], 0.5) == 0.0
    with pytest.raises(UsageError):
        out_of_fold_f1(labels, probs[:2], 0.4)


def test_fold_votes_use_each_folds_own_threshold_and_ties_are_positive():
    probs = np.array(
        [
            [0.10, 0.10, 0.90, 0.90],
            [0.80, 0.80, 0.80, 0.20],
            [0.60, 0.00, 0.60, 0.60],
            [0.95, 0.00, 0.00, 0.95],
        ]
    )
    thresholds = [0.05, 0.85, 0.5, 0.9]
    scores, decisions = fold_votes(probs, thresholds)
    np.testing.assert_allclose(scores, [0.75, 0.25, 0.5, 0.75])
    np.testing.assert_array_equal(decisions, [True, False, True, True])
    with pytest.raises(UsageError):
        fold_votes(probs, thresholds[:3])


def test_calibrated_mean_applies_each_folds_own_calibrator():
    probs = np.array([[0.2, 0.6], [0.4, 0.8]])
    identity = Calibrator("isotonic", {"x": [0.0, 1.0], "y": [0.0, 1.0]})
    halve = Calibrator("isotonic", {"x": [0.0, 1.0], "y": [0.0, 0.5]})
    np.testing.assert_allclose(calibrated_mean(probs, [identity, identity]), [0.3, 0.7])
    np.testing.assert_allclose(calibrated_mean(probs, [identity, halve]), [0.2, 0.5])
    with pytest.raises(UsageError):
        calibrated_mean(probs, [identity])


# --------------------------------------------------------------------------- the collapse

N_VAL, N_TEST, PREVALENCE = 400, 2000, 0.3
SHIFTS = (-3.3, 3.0, 3.0, 3.6, 3.0)  # fold 0 timid, fold 3 bold, the rest bold-ish


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _slices(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and a latent evidence score that separates them well."""
    labels = (rng.random(n) < PREVALENCE).astype(int)
    return labels, np.where(labels == 1, 1.5, -1.5) + rng.normal(0, 1, n)


def _model(rng: np.random.Generator, evidence: np.ndarray, shift: float) -> np.ndarray:
    """A fold model: ranks slices as well as its siblings, on its own probability scale."""
    return _sigmoid(evidence + shift + rng.normal(0, 0.3, evidence.shape))


@pytest.fixture(scope="module")
def study():
    """Five fold models with their own validation slices and a shared test set."""
    rng = np.random.default_rng(0)
    test_labels, test_evidence = _slices(rng, N_TEST)
    test_probs = np.stack([_model(rng, test_evidence, s) for s in SHIFTS])
    val = []
    for shift in SHIFTS:
        labels, evidence = _slices(rng, N_VAL)
        val.append((labels, _model(rng, evidence, shift)))
    return test_labels, test_probs, val


def test_the_mean_vote_collapses_and_the_flags_say_so(study):
    test_labels, test_probs, val = study
    means = test_probs.mean(axis=1)
    assert means[0] < 0.1 and means[3] > 0.85

    curves = [f1_curve(labels, probs) for labels, probs in val]
    thresholds = [best_threshold(curve) for curve in curves]
    fold_test_f1 = [f1_score(test_labels, probs >= t) for probs, t in zip(test_probs, thresholds)]
    assert min(fold_test_f1) > 0.8  # every fold on its own is good

    vote_t, _ = voting_threshold(curves)
    vote = test_probs.mean(axis=0) >= vote_t
    assert vote_t > 0.9
    assert f1_score(test_labels, vote) < 0.2
    assert recall_score(test_labels, vote) < 0.1  # the haemorrhages are missed

    oof = out_of_fold_f1([v[0] for v in val], [v[1] for v in val], vote_t)
    found = codes(vote_warnings(thresholds, [c.max() for c in curves], vote_t, oof))
    assert "worse-than-every-fold" in found and "thresholds-spread" in found


def test_fold_votes_recover_the_vote(study):
    test_labels, test_probs, val = study
    thresholds = [best_threshold(f1_curve(labels, probs)) for labels, probs in val]
    _, decisions = fold_votes(test_probs, thresholds)
    assert f1_score(test_labels, decisions) > 0.8


def test_calibrated_mean_recovers_the_vote(study):
    test_labels, test_probs, val = study
    calibrators = [fit_calibrator("isotonic", labels, probs) for labels, probs in val]
    curves = [f1_curve(labels, cal.apply(probs)) for (labels, probs), cal in zip(val, calibrators)]
    threshold, _ = voting_threshold(curves)
    scores = calibrated_mean(test_probs, calibrators)
    assert 0.1 < threshold < 0.9
    assert f1_score(test_labels, scores >= threshold) > 0.8


# ------------------------------------------------------------------ in a run's vote


def _shifted_folds(protocol, dataset, nested, shifts):
    """Fold records whose models rank slices alike but speak different probability
    scales (`shifts[k]` added to fold k's logits), as the protocol records a fold."""
    from ichbench.records import FoldRecord, Predictions
    from ichbench.vote import best_threshold, f1_curve

    split = nested[0]
    rng = np.random.default_rng(0)
    folds = {}
    for fold, shift in zip(split.folds, shifts, strict=True):
        rows = {
            "val": np.flatnonzero(np.isin(dataset.patient_ids, fold.val)),
            "test": np.flatnonzero(np.isin(dataset.patient_ids, split.test)),
        }
        probs = {
            name: 1
            / (1 + np.exp(-(4 * (dataset.labels[r] - 0.5) + rng.normal(0, 1, len(r)) + shift)))
            for name, r in rows.items()
        }
        curve = f1_curve(dataset.labels[rows["val"]], probs["val"])
        both = np.concatenate([rows["val"], rows["test"]])
        folds[(0, fold.index)] = FoldRecord(
            fold=fold.index,
            threshold=best_threshold(curve),
            best_epoch=1,
            train_ich_before=0,
            train_healthy_before=0,
            train_ich=0,
            train_healthy=0,
            added=0,
            removed=0,
            train_patients=list(fold.train),
            val_patients=list(fold.val),
            wall_s=0.0,
            curve=curve,
            metrics=[],
            predictions=Predictions(
                split=np.array(["val"] * len(rows["val"]) + ["test"] * len(rows["test"])),
                patient_id=dataset.patient_ids[both],
                slice=dataset.slice_numbers[both],
                label=dataset.labels[both],
                prob=np.concatenate([probs["val"], probs["test"]]),
            ),
        )
    return folds


@pytest.mark.parametrize("ensemble", ["mean", "fold-votes", "calibrated-mean"])
def test_the_run_says_when_its_vote_cannot_be_trusted(tiny_dataset, ensemble):
    from ichbench.config import RunConfig
    from ichbench.events import RunWarning
    from ichbench.protocol import RunProtocol

    said = []
    config = RunConfig(
        data="synthetic:8,0,32", backbone="tinycnn", folds=2, preset="quick", device="cpu"
    )
    protocol = RunProtocol(
        replace_ensemble(config, ensemble), observers=[said.append], cache_dir=None
    )
    nested = protocol.split_of(tiny_dataset)
    folds = _shifted_folds(protocol, tiny_dataset, nested, shifts=(-5.0, 4.0))
    thresholds = [f.threshold for f in folds.values()]
    assert max(thresholds) - min(thresholds) > 0.5  # the folds' scales are far apart
    (vote,) = protocol.vote(tiny_dataset, nested, folds)
    codes = {w["code"] for w in vote.warnings}
    messages = [e.message for e in said if isinstance(e, RunWarning)]
    slice_f1 = next(m.f1 for m in vote.metrics if (m.scope, m.split) == ("slice", "test"))
    if ensemble == "mean":
        assert "thresholds-spread" in codes
        assert any("fold-votes" in m for m in messages) and len(messages) == len(codes)
    else:  # each fold at its own threshold, or on one calibrated scale: the remedies
        assert "thresholds-spread" not in codes
        assert slice_f1 > 0.5
    slice_row = next(m for m in vote.metrics if (m.scope, m.split) == ("slice", "test"))
    if ensemble == "fold-votes":  # scores are fractions of folds, cut at a majority
        assert vote.threshold == slice_row.threshold == 0.5
        assert slice_row.brier is None and slice_row.ece is None
    else:
        assert slice_row.brier is not None and 0 <= slice_row.ece <= 1
    if ensemble == "calibrated-mean":  # fitted on each fold's validation slices only
        assert [c["fold"] for c in vote.calibration] == [0, 1]
        assert all(c["kind"] == "isotonic" for c in vote.calibration)
    assert all(w["outer"] is None for w in vote.warnings)


def replace_ensemble(config, ensemble):
    from dataclasses import replace

    return replace(config, ensemble=ensemble)
