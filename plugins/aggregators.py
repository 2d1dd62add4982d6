"""Built-in aggregation rules: how fold models vote on a slice, and how slices decide a patient.

Ensemble rules turn the fold models' probabilities (folds, slices) into one score and one
decision per slice at the voting threshold. Patient rules turn one patient's slice scores
and decisions, in slice order, into one patient score (for AUC) and one decision; the
`learned` rule first fits on out-of-fold validation patients (the contract is in
`ichbench.patient_features`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ichbench.errors import UsageError
from ichbench.hookspecs import hookimpl
from ichbench.patient_features import FEATURE_NAMES, PatientSlices, features_matrix
from ichbench.spec import Spec, expect_args, parse_int

# --------------------------------------------------------------------------- ensemble


def _as_folds(probs: np.ndarray) -> np.ndarray:
    array = np.asarray(probs, dtype=float)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0:
        raise UsageError(
            f"ensemble rules expect probabilities shaped (folds, slices), got {array.shape}"
        )
    return array


@dataclass(frozen=True)
class Reduce:
    """Scores are a reduction over folds (mean, median, max); decisions score >= threshold."""

    name: str
    reduce: Callable[..., np.ndarray]

    def combine(self, probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        scores = self.reduce(_as_folds(probs), axis=0)
        return scores, scores >= threshold


@dataclass(frozen=True)
class Majority:
    """Each fold votes at the threshold; the score is the fraction of folds voting ICH and a
    slice is ICH when more than half do."""

    name: str = "majority"
    scores_are_probabilities: ClassVar[bool] = False  # fractions of folds

    def combine(self, probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        scores = (_as_folds(probs) >= threshold).mean(axis=0)
        return scores, scores > 0.5


def _reduce_factory(name: str, reduce: Callable[..., np.ndarray]) -> Callable[[Spec], Reduce]:
    def factory(spec: Spec) -> Reduce:
        expect_args(spec, 0, f"{name} (no arguments)")
        return Reduce(name, reduce)

    return factory


@dataclass(frozen=True)
class FoldVotes:
    """Each fold votes at its own validation threshold (not the shared voting threshold:
    fold models whose probabilities are on different scales each keep the cut that suits
    them); the score is the fraction of folds voting ICH, ICH from half of them on."""

    name: str = "fold-votes"
    per_fold_thresholds: ClassVar[bool] = True  # `combine` gets one threshold per fold
    scores_are_probabilities: ClassVar[bool] = False  # fractions of folds

    def combine(self, probs: np.ndarray, threshold) -> tuple[np.ndarray, np.ndarray]:
        from ichbench.vote_trust import fold_votes

        return fold_votes(_as_folds(probs), threshold)


@dataclass(frozen=True)
class CalibratedMean:
    """Each fold's probabilities mapped by a calibrator fitted on that fold's own
    validation predictions (isotonic by default, or temperature), then averaged and cut at
    the voting threshold chosen on the calibrated validation curves: folds that speak
    different probability scales are put on one before they are averaged. The core fits
    and applies the calibrators (validation data only); `combine` gets calibrated folds."""

    kind: str = "isotonic"
    name: str = "calibrated-mean"
    calibrates_folds: ClassVar[bool] = True  # the core calibrates each fold first

    def combine(self, probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        scores = _as_folds(probs).mean(axis=0)
        return scores, scores >= threshold


def calibrated_mean_factory(spec: Spec) -> CalibratedMean:
    from ichbench.calibration import CALIBRATORS

    expect_args(spec, (0, 1), "calibrated-mean[:isotonic|temperature]")
    kind = spec.args[0].lower() if spec.args else "isotonic"
    if kind not in CALIBRATORS:
        raise UsageError(
            f"calibrated-mean:{spec.args[0]}: expected one of {', '.join(CALIBRATORS)}"
        )
    return CalibratedMean(kind)


def fold_votes_factory(spec: Spec) -> FoldVotes:
    expect_args(spec, 0, "fold-votes (no arguments)")
    return FoldVotes()


def majority_factory(spec: Spec) -> Majority:
    expect_args(spec, 0, "majority (no arguments)")
    return Majority()


# --------------------------------------------------------------------------- patient


def _slices(scores: np.ndarray, decisions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float).ravel()
    d = np.asarray(decisions, dtype=bool).ravel()
    if s.shape != d.shape:
        raise UsageError(
            f"patient rules need one decision per slice score, got {s.shape[0]} "
            f"scores and {d.shape[0]} decisions"
        )
    return s, d


@dataclass(frozen=True)
class AnySlice:
    """The paper's rule: ICH if any slice is; the score is the highest slice score."""

    name: str = "any"

    def decide(
        self, scores: np.ndarray, decisions: np.ndarray, threshold: float
    ) -> tuple[float, bool]:
        s, d = _slices(scores, decisions)
        if s.size == 0:
            return 0.0, False
        return float(s.max()), bool(d.any())


def _longest_run(flags: np.ndarray) -> int:
    """Length of the longest run of True values."""
    if not flags.any():
        return 0
    padded = np.concatenate([[0], flags.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


@dataclass(frozen=True)
class KConsecutive:
    """ICH when at least k consecutive slices are positive; the score is the best window's
    weakest slice (max over windows of k slices of the min score), which crosses the
    threshold exactly when a window of k slices all do. A patient with fewer than k slices
    is never positive; its score is then the minimum over all its slices."""

    k: int

    def decide(
        self, scores: np.ndarray, decisions: np.ndarray, threshold: float
    ) -> tuple[float, bool]:
        s, d = _slices(scores, decisions)
        if s.size == 0:
            return 0.0, False
        width = min(self.k, s.size)
        windows = np.lib.stride_tricks.sliding_window_view(s, width)
        return float(windows.min(axis=1).max()), _longest_run(d) >= self.k


@dataclass(frozen=True)
class TopKMean:
    """The score is the mean of the k highest slice scores (all of them if fewer); ICH
    when it reaches the threshold."""

    k: int

    def decide(
        self, scores: np.ndarray, decisions: np.ndarray, threshold: float
    ) -> tuple[float, bool]:
        s, _ = _slices(scores, decisions)
        if s.size == 0:
            return 0.0, False
        score = float(np.sort(s)[-self.k :].mean())
        return score, score >= threshold


@dataclass(frozen=True)
class MaxProb:
    """ICH when the highest slice score reaches the threshold, ignoring the slice
    decisions (which differ from score >= threshold under the majority ensemble)."""

    name: str = "max-prob"

    def decide(
        self, scores: np.ndarray, decisions: np.ndarray, threshold: float
    ) -> tuple[float, bool]:
        s, _ = _slices(scores, decisions)
        if s.size == 0:
            return 0.0, False
        score = float(s.max())
        return score, score >= threshold


def any_factory(spec: Spec) -> AnySlice:
    expect_args(spec, 0, "any (no arguments)")
    return AnySlice()


def k_consecutive_factory(spec: Spec) -> KConsecutive:
    form = "k-consecutive:K with K an integer >= 1"
    (value,) = expect_args(spec, 1, form)
    return KConsecutive(parse_int(spec, value, form=form, minimum=1))


def topk_mean_factory(spec: Spec) -> TopKMean:
    form = "topk-mean:K with K an integer >= 1"
    (value,) = expect_args(spec, 1, form)
    return TopKMean(parse_int(spec, value, form=form, minimum=1))


def max_prob_factory(spec: Spec) -> MaxProb:
    expect_args(spec, 0, "max-prob (no arguments)")
    return MaxProb()


# --------------------------------------------------------------------------- learned

LEARNED_DEFAULT_K = 3
LEARNED_RANDOM_STATE = 0
LEARNED_MIN_PER_CLASS = 2


@dataclass(frozen=True)
class Learned:
    """A patient rule learned from validation patients instead of fixed by hand: logistic
    regression on each patient's `FEATURE_NAMES` (highest slice score, mean of the K
    highest, flagged slices, longest flagged run, where the highest score sits), so that
    a long run of confident slices can count for more than one stray slice.

    Contract (shared by every rule that fits; see `ichbench.patient_features`):
    `fits = True` marks the class; `fit(patients, threshold)` takes the out-of-fold
    validation patients as `PatientSlices` (decisions cut at `threshold`) and returns a
    new `FittedLearned`, leaving this object unfitted so that it can serve each fold and
    the vote. This object's own `decide` raises: it has learned nothing yet.

    The model is `StandardScaler` then `LogisticRegression` with balanced class weights
    (a few dozen patients, usually more ICH than healthy or the reverse) and a fixed
    random_state. Its cut on the predicted probability is chosen on the same patients to
    maximise patient F1 on the grid 0.00..1.00 (`ichbench.vote.f1_curve`); among equal
    F1 the lowest cut is kept, as for the voting threshold, because a missed bleed costs
    more than a second look at a healthy scan. With fewer than two patients of either
    class there is neither a model to fit nor a cut to choose: the fitted rule then
    behaves exactly like `any` and says so in `fitted["fallback"]`.
    """

    k: int = LEARNED_DEFAULT_K
    fits: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return f"learned:{self.k}"

    def decide(
        self, scores: np.ndarray, decisions: np.ndarray, threshold: float
    ) -> tuple[float, bool]:
        raise UsageError(
            f"the patient rule {self.name} must be fitted first: call fit(patients, "
            "threshold) on validation patients and decide with the rule it returns"
        )

    def fit(self, patients: Sequence[PatientSlices], threshold: float) -> FittedLearned:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from ichbench.vote import best_threshold, f1_curve

        labels = np.array([p.label for p in patients], dtype=int)
        n_ich = int(labels.sum())
        n_healthy = int(labels.size - n_ich)
        summary: dict[str, Any] = {
            "rule": self.name,
            "k": self.k,
            "features": list(FEATURE_NAMES),
            "slice_threshold": float(threshold),
            "n_ich": n_ich,
            "n_healthy": n_healthy,
            "coefficients": None,
            "intercept": None,
            "scaler_mean": None,
            "scaler_scale": None,
            "probability_threshold": None,
            "fit_f1": None,
            "fallback": None,
        }
        if min(n_ich, n_healthy) < LEARNED_MIN_PER_CLASS:
            summary["fallback"] = (
                f"fitted on {n_ich} ICH and {n_healthy} healthy patients; at least "
                f"{LEARNED_MIN_PER_CLASS} of each are needed, so the rule behaves like 'any' "
                "(ICH if any slice is; score = highest slice score)"
            )
            return FittedLearned(k=self.k, fitted=summary)

        features = features_matrix(patients, self.k)
        model = make_pipeline(
            StandardScaler(),
            LogisticRegression(
                class_weight="balanced", random_state=LEARNED_RANDOM_STATE, max_iter=1000
            ),
        )
        model.fit(features, labels)
        probs = model.predict_proba(features)[:, 1]
        curve = f1_curve(labels, probs)
        cut = best_threshold(curve)
        scaler, logistic = model[0], model[-1]
        summary.update(
            coefficients=[float(c) for c in logistic.coef_.ravel()],
            intercept=float(logistic.intercept_[0]),
            scaler_mean=[float(m) for m in scaler.mean_],
            scaler_scale=[float(s) for s in scaler.scale_],
            probability_threshold=cut,
            fit_f1=float(curve.max()),
        )
        return FittedLearned(k=self.k, fitted=summary, model=model, cut=cut)


@dataclass(frozen=True)
class FittedLearned:
    """What `Learned.fit` returns: the patient score is the model's probability of ICH and
    the decision is that score at or above the cut chosen at fit time (the `threshold`
    argument is not used: the slice decisions were already cut at it). Without a model
    (`fitted["fallback"]` set) it is exactly the `any` rule. A patient without slices is
    negative with score 0, as under every other rule."""

    k: int
    fitted: dict[str, Any]
    model: Any = field(default=None, repr=False, compare=False)
    cut: float | None = None

    @property
    def name(self) -> str:
        return f"learned:{self.k}"

    def decide(
        self, scores: np.ndarray, decisions: np.ndarray, threshold: float
    ) -> tuple[float, bool]:
        if self.model is None:
            return AnySlice().decide(scores, decisions, threshold)
        s, d = _slices(scores, decisions)
        if s.size == 0:
            return 0.0, False
        features = features_matrix([PatientSlices(s, d, 0)], self.k)
        score = float(self.model.predict_proba(features)[0, 1])
        return score, score >= self.cut


MAX_K = 1000  # slices averaged: more than any CT scan has (a top-k over all is the mean)


def learned_factory(spec: Spec) -> Learned:
    form = f"learned[:K] with K an integer from 1 to {MAX_K} (default {LEARNED_DEFAULT_K})"
    args = expect_args(spec, (0, 1), form)
    if not args:
        return Learned()
    k = parse_int(spec, args[0], form=form, minimum=1)
    if k > MAX_K:
        raise UsageError(f"{spec.name}: {k} is above {MAX_K}; expected {form}")
    return Learned(k)


@hookimpl
def register_aggregators(register):
    register(
        "mean",
        _reduce_factory("mean", np.mean),
        kind="ensemble",
        help="Mean of the fold models' probabilities, cut at the threshold (default).",
    )
    register(
        "median",
        _reduce_factory("median", np.median),
        kind="ensemble",
        help="Median of the fold models' probabilities, cut at the threshold.",
    )
    register(
        "max",
        _reduce_factory("max", np.max),
        kind="ensemble",
        help="Highest fold probability, cut at the threshold.",
    )
    register(
        "majority",
        majority_factory,
        kind="ensemble",
        help="Each fold votes at the threshold; ICH when more than half vote ICH.",
    )
    register(
        "calibrated-mean",
        calibrated_mean_factory,
        kind="ensemble",
        help="calibrated-mean[:isotonic|temperature] — each fold calibrated on its own "
        "validation predictions, then the mean at the threshold of the calibrated curves.",
    )
    register(
        "fold-votes",
        fold_votes_factory,
        kind="ensemble",
        help="Each fold votes at its own validation threshold; ICH when at least half do.",
    )
    register(
        "any",
        any_factory,
        kind="patient",
        help="ICH if any slice is ICH (the paper's rule); score = highest slice score.",
    )
    register(
        "k-consecutive",
        k_consecutive_factory,
        kind="patient",
        help="k-consecutive:K — ICH if at least K consecutive slices are ICH.",
    )
    register(
        "topk-mean",
        topk_mean_factory,
        kind="patient",
        help="topk-mean:K — ICH if the mean of the K highest slice scores reaches the threshold.",
    )
    register(
        "max-prob",
        max_prob_factory,
        kind="patient",
        help="ICH if the highest slice score reaches the threshold.",
    )
    register(
        "learned",
        learned_factory,
        kind="patient",
        help="learned[:K] — logistic regression on each patient's slice summary (max, "
        "top-K mean, flagged count, longest flagged run, argmax position), fitted on "
        "validation patients, cut at its best patient F1.",
    )
