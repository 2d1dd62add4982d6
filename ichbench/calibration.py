"""Probability calibration: how far predicted probabilities are from observed frequencies,
and post-hoc maps that bring them closer.

Why it matters here: the vote averages the fold models' probabilities and cuts the average
at one threshold, which only makes sense when every fold speaks the same probability scale.
A calibrator is fitted on one fold's out-of-fold validation predictions (never on test,
which would leak the very labels it is scored on) and applied to that fold's test
predictions. A fitted calibrator is reduced to a JSON-able `params` dict, so a store can
record it and `Calibrator.from_params` can rebuild exactly the same map later.

Everything here is pure: arrays in, numbers or arrays out, nothing printed or written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss

from ichbench.errors import UsageError

CALIBRATORS = ("temperature", "isotonic")
"""The kinds `fit_calibrator` accepts."""

N_BINS = 10
"""Default number of equal-width bins for ECE and reliability diagrams."""

EPS = 1e-7
"""Probabilities are clipped to [EPS, 1 - EPS] before a logit, so 0 and 1 stay finite."""

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The search interval for the temperature. Its lower end is reached on separable
validation data (the likelihood keeps improving as T -> 0); the bound keeps T finite."""


# --------------------------------------------------------------------------- inputs


def _check(labels, probs, *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels and probabilities as 1-D arrays of one length, or a UsageError."""
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=float)
    if y.ndim != 1 or p.ndim != 1 or y.shape != p.shape:
        raise UsageError(
            f"{what} needs labels and probabilities as 1-D arrays of one length, "
            f"got shapes {y.shape} and {p.shape}"
        )
    if y.size == 0:
        raise UsageError(f"{what} needs at least one prediction, got none")
    if not np.isin(y, (0, 1)).all():
        found = sorted({v.item() for v in np.unique(y)} - {0, 1})[:5]
        raise UsageError(f"{what} needs labels 0 or 1, found {found}")
    _check_probs(p, what=what)
    return y.astype(int), p


def _check_probs(p: np.ndarray, *, what: str) -> None:
    if not np.isfinite(p).all() or (p.size and (p.min() < 0 or p.max() > 1)):
        bad = p[~(np.isfinite(p) & (p >= 0) & (p <= 1))][:3].tolist()
        raise UsageError(f"{what} needs probabilities in [0, 1], found {bad}")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


# --------------------------------------------------------------------------- measures


def brier(labels, probs) -> float:
    """Mean squared difference between probability and label (scikit-learn's Brier score).

    Lower is better; it mixes calibration with discrimination, so read it with `ece`.
    """
    y, p = _check(labels, probs, what="brier")
    return float(brier_score_loss(y, p, pos_label=1))


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram's data: one entry per equal-width bin on [0, 1].

    Every bin is kept, so arrays line up with `edges`; an empty bin has count 0 and NaN
    for its mean predicted probability and observed fraction (there is nothing to show).
    """

    edges: np.ndarray  # (n_bins + 1,): i / n_bins
    centres: np.ndarray  # (n_bins,)
    mean_predicted: np.ndarray  # (n_bins,): mean probability of the bin's predictions
    observed: np.ndarray  # (n_bins,): fraction of the bin's predictions that are positive
    counts: np.ndarray  # (n_bins,): predictions in the bin

    @property
    def ece(self) -> float:
        """Count-weighted mean of |observed - mean predicted| over the non-empty bins."""
        full = self.counts > 0
        gaps = np.abs(self.observed[full] - self.mean_predicted[full])
        return float(np.sum(self.counts[full] * gaps) / np.sum(self.counts[full]))


def bin_index(probs, n_bins: int = N_BINS) -> np.ndarray:
    """The equal-width bin of each probability: bin i holds p in [i/n, (i+1)/n), and the
    last bin is closed at 1 so p = 1 falls in it.

    Edges are the correctly rounded floats i/n, so a probability written as an edge (0.3
    with ten bins) lands in the bin that starts there, not in the one below it through
    rounding (0.3 * 10 is 3.0000000000000004, but 0.29 * 100 is 28.999999999999996).
    """
    if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 1:
        raise UsageError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = np.arange(n_bins + 1) / n_bins
    index = np.searchsorted(edges, np.asarray(probs, dtype=float), side="right") - 1
    return np.clip(index, 0, n_bins - 1)


def reliability(labels, probs, n_bins: int = N_BINS) -> Reliability:
    """Bin predictions by probability (see `bin_index`) and compare each bin's mean
    probability with the fraction of positives in it."""
    y, p = _check(labels, probs, what="reliability")
    index = bin_index(p, n_bins)
    counts = np.bincount(index, minlength=n_bins)
    sums = np.bincount(index, weights=p, minlength=n_bins)
    positives = np.bincount(index, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(counts > 0, sums / counts, np.nan)
        observed = np.where(counts > 0, positives / counts, np.nan)
    edges = np.arange(n_bins + 1) / n_bins
    return Reliability(
        edges=edges,
        centres=(edges[:-1] + edges[1:]) / 2,
        mean_predicted=mean_predicted,
        observed=observed,
        counts=counts,
    )


def ece(labels, probs, n_bins: int = N_BINS) -> float:
    """Expected calibration error: the count-weighted mean, over the non-empty equal-width
    bins of `bin_index`, of |fraction positive - mean probability|.

    0 means every bin's probabilities match what happened; it ignores ranking, so a
    constant prediction at the prevalence scores 0. Empty bins carry no weight.
    """
    return reliability(labels, probs, n_bins).ece


def nll(labels, probs) -> float:
    """Mean negative log-likelihood (log loss) of the labels, probabilities clipped at EPS."""
    y, p = _check(labels, probs, what="nll")
    z = _logit(p)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


# --------------------------------------------------------------------------- calibrators


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from probabilities to calibrated probabilities.

    `params` is all there is to it, and JSON-able, so what a store records rebuilds the
    same map: {"temperature": T} for temperature scaling, {"x": [...], "y": [...]} (the
    isotonic fit's thresholds, interpolated linearly and clipped at the ends) for isotonic.
    A calibrator that could not be fitted (one class only) is the identity of its kind and
    says why in params["fallback"].
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate_params(self.kind, self.params)

    @classmethod
    def from_params(cls, kind: str, params: Mapping[str, Any]) -> Calibrator:
        """Rebuild a calibrator from its kind and recorded params (as `params` gave them)."""
        return cls(kind, dict(params))

    @property
    def fallback(self) -> str | None:
        """Why this calibrator is the identity instead of a fit, or None when it was fitted."""
        return self.params.get("fallback")

    def apply(self, probs) -> np.ndarray:
        """Calibrated probabilities, one per input probability, in [0, 1]."""
        p = np.asarray(probs, dtype=float)
        _check_probs(p, what=f"{self.kind} calibration")
        if self.kind == "temperature":
            return _sigmoid(_logit(p) / self.params["temperature"])
        x = np.asarray(self.params["x"], dtype=float)
        y = np.asarray(self.params["y"], dtype=float)
        return np.interp(p, x, y)


def _unknown_kind(kind: object) -> UsageError:
    return UsageError(f"Unknown calibrator {kind!r}. Available: {', '.join(CALIBRATORS)}")


def _validate_params(kind: str, params: Mapping[str, Any]) -> None:
    if kind not in CALIBRATORS:
        raise _unknown_kind(kind)
    if kind == "temperature":
        t = params.get("temperature")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t < math.inf):
            raise UsageError(
                f"temperature calibrator needs params {{'temperature': T > 0}}, got {params!r}"
            )
        return
    x, y = params.get("x"), params.get("y")
    if not isinstance(x, (list, tuple)) or not isinstance(y, (list, tuple)):
        raise UsageError(
            f"isotonic calibrator needs params {{'x': [...], 'y': [...]}}, got keys "
            f"{sorted(params)}"
        )
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if (
        xs.size == 0
        or xs.shape != ys.shape
        or not (np.isfinite(xs).all() and np.isfinite(ys).all())
        or np.any(np.diff(xs) < 0)
        or np.any(np.diff(ys) < 0)
        or ys.min() < 0
        or ys.max() > 1
    ):
        raise UsageError(
            "isotonic calibrator needs non-empty x and y of one length, both non-decreasing, "
            f"y in [0, 1]; got {len(xs)} x and {len(ys)} y"
        )


def _identity(kind: str, reason: str) -> Calibrator:
    if kind == "temperature":
        return Calibrator(kind, {"temperature": 1.0, "fallback": reason})
    return Calibrator(kind, {"x": [0.0, 1.0], "y": [0.0, 1.0], "fallback": reason})


def fit_calibrator(kind: str, labels, probs) -> Calibrator:
    """Fit a calibrator of `kind` on one fold's out-of-fold validation predictions.

    temperature: p -> sigmoid(logit(p) / T), T minimising the validation log loss over
        TEMPERATURE_BOUNDS. One parameter, keeps the ranking (so AUC), and cannot move
        the probability where a model is unsure (logit 0); it cannot undo a shift.
    isotonic: the best non-decreasing step map (scikit-learn's IsotonicRegression,
        clipped outside the fitted range, output in [0, 1]), interpolated linearly between
        its thresholds. Undoes any monotone distortion, shifts included, but ties scores
        that fall in one step and needs more data.

    Degenerate inputs: no predictions at all raise a UsageError (nothing to fit on means
    the caller passed the wrong slice). Labels of one class only cannot say how wrong the
    probabilities are (the likelihood only rewards pushing every probability towards the
    one class seen, and isotonic would map everything to 0 or 1, erasing the ranking), so
    the result is the identity of the asked kind (T = 1, exact but for the clipping at
    EPS; or x = y = [0, 1]), with the reason in params["fallback"] for the caller to report.
    """
    if kind not in CALIBRATORS:
        raise _unknown_kind(kind)
    y, p = _check(labels, probs, what=f"{kind} calibration")
    positives = int(y.sum())
    if positives in (0, len(y)):
        only = "positive" if positives else "negative"
        return _identity(
            kind,
            f"validation labels are all {only} ({len(y)} predictions); identity used",
        )
    if kind == "temperature":
        return Calibrator(kind, {"temperature": _fit_temperature(y, p)})
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y)
    return Calibrator(
        kind,
        {
            "x": [float(v) for v in iso.X_thresholds_],
            "y": [float(v) for v in iso.y_thresholds_],
        },
    )


def _fit_temperature(y: np.ndarray, p: np.ndarray) -> float:
    """T minimising the mean log loss of sigmoid(z / T); searched over log T, where the
    loss is better conditioned (halving and doubling T are equally far from 1)."""
    z = _logit(p)

    def loss(log_t: float) -> float:
        s = z / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    lo, hi = TEMPERATURE_BOUNDS
    found = minimize_scalar(
        loss, bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": 1e-6}
    )
    return float(min(max(math.exp(found.x), lo), hi))
