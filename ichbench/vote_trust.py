"""When not to trust the vote, and the math of two ensembles that avoid its blind spot.

The vote (ichbench.vote) averages the fold models' test probabilities and cuts the average
at the argmax of the mean of the folds' validation F1 curves. That threshold is chosen on
each fold's own probabilities but applied to their average: when the folds speak different
probability scales (one fold's probabilities near 0.06 on average, another's near 0.92),
the folds' best thresholds sit far apart, the mean curve peaks where the high-scale folds
like it, and the average, pulled down by the low-scale fold, rarely reaches it. Every fold
can score a test F1 of 0.72-0.90 while the vote, at 0.97, finds 2% of the haemorrhages.

`vote_warnings` detects this from numbers a run already has, so a report can say so
instead of printing a quiet collapse. `fold_votes` is the remedy it names (the ensemble
option `fold-votes`); `calibrated_mean` is the math of the other one (each fold
calibrated on its own validation set before averaging), not yet an ensemble option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ichbench.calibration import Calibrator
from ichbench.errors import UsageError

MAX_THRESHOLD_SPREAD = 0.5
"""Fold thresholds further apart than this (max - min) mean the folds' probabilities are
on different scales, and their average is on none of them."""

EDGE_LOW = 0.01
EDGE_HIGH = 0.99
"""A vote threshold at or beyond these ends of the 0.00..1.00 grid means the mean curve
peaked where almost nothing (or almost everything) is called positive."""

WORSE_MARGIN = 0.05
"""How far the vote's out-of-fold validation F1 must fall below the worst fold's own to
flag: each fold's F1 at its own best threshold is optimistic (the threshold was chosen on
those slices), so a healthy vote often sits a little below the worst of them."""

MAJORITY = 0.5
"""`fold_votes` calls a slice positive when at least this fraction of folds do."""

_TOLERANCE = 1e-9  # grid values such as 0.8 - 0.3 are not exactly 0.5 in binary

REMEDY = "try --ensemble fold-votes (each fold votes at its own threshold)"


@dataclass(frozen=True)
class VoteWarning:
    """One reason to distrust a vote: a stable code for tools, a one-line message for people."""

    code: str  # 'worse-than-every-fold' | 'thresholds-spread' | 'threshold-at-edge'
    message: str


def vote_warnings(
    fold_thresholds: Sequence[float],
    fold_val_f1: Sequence[float],
    vote_threshold: float,
    vote_oof_val_f1: float,
) -> list[VoteWarning]:
    """The reasons, if any, to distrust a vote; an empty list for a healthy one.

    Takes the run's summary numbers, not its predictions, so it can be called on what a
    store already holds and costs nothing. `fold_thresholds[k]` and `fold_val_f1[k]` are
    fold k's best threshold and the F1 there (its own validation curve's argmax and max);
    `vote_oof_val_f1` is the F1 of the out-of-fold validation predictions (each validation
    slice scored by the one model that did not train on it) cut at `vote_threshold` (see
    `out_of_fold_f1`). That last number is the vote threshold's only honest validation
    score: the test set must not be used to decide whether to trust it.

    Codes, each raised independently:
      worse-than-every-fold: `vote_oof_val_f1` is more than WORSE_MARGIN below every
        fold's validation F1. A fold's F1 at its own best threshold is a little optimistic,
        so a healthy vote sits near the folds, not below all of them.
      thresholds-spread: max - min of the fold thresholds exceeds MAX_THRESHOLD_SPREAD
        (exactly MAX_THRESHOLD_SPREAD does not flag).
      threshold-at-edge: the vote threshold is <= EDGE_LOW or >= EDGE_HIGH.
    """
    thresholds = np.asarray(fold_thresholds, dtype=float)
    f1s = np.asarray(fold_val_f1, dtype=float)
    if thresholds.ndim != 1 or thresholds.size == 0 or thresholds.shape != f1s.shape:
        raise UsageError(
            "vote_warnings needs one threshold and one validation F1 per fold, got "
            f"{thresholds.size} thresholds and {f1s.size} F1 values"
        )
    values = np.concatenate([thresholds, f1s, [vote_threshold, vote_oof_val_f1]])
    if not np.isfinite(values).all():
        raise UsageError("vote_warnings needs finite thresholds and F1 values, found NaN or inf")

    warnings: list[VoteWarning] = []
    if vote_oof_val_f1 < f1s.min() - WORSE_MARGIN - _TOLERANCE:
        warnings.append(
            VoteWarning(
                "worse-than-every-fold",
                f"the vote's out-of-fold validation F1 at threshold {vote_threshold:.2f} is "
                f"{vote_oof_val_f1:.2f}, below every fold's own validation F1 "
                f"({f1s.min():.2f}-{f1s.max():.2f}): the shared threshold does not suit "
                f"the averaged probabilities; {REMEDY}",
            )
        )
    low, high = float(thresholds.min()), float(thresholds.max())
    if high - low > MAX_THRESHOLD_SPREAD + _TOLERANCE:
        warnings.append(
            VoteWarning(
                "thresholds-spread",
                f"fold thresholds range {low:.2f}-{high:.2f} (spread {high - low:.2f} > "
                f"{MAX_THRESHOLD_SPREAD:.2f}): the folds' probabilities are on different "
                f"scales, so their mean is on none of them; {REMEDY}",
            )
        )
    if vote_threshold <= EDGE_LOW + _TOLERANCE or vote_threshold >= EDGE_HIGH - _TOLERANCE:
        side = "nearly nothing" if vote_threshold >= EDGE_HIGH - _TOLERANCE else "nearly all"
        warnings.append(
            VoteWarning(
                "threshold-at-edge",
                f"the vote threshold {vote_threshold:.2f} is at the edge of the 0.00-1.00 "
                f"grid (<= {EDGE_LOW:.2f} or >= {EDGE_HIGH:.2f}): the mean validation curve "
                f"peaked where {side} is called ICH; {REMEDY}",
            )
        )
    return warnings


def out_of_fold_f1(
    val_labels: Sequence[np.ndarray], val_probs: Sequence[np.ndarray], threshold: float
) -> float:
    """F1 of all folds' validation predictions pooled, each cut at `threshold`.

    `val_labels[k]`, `val_probs[k]` are fold k's validation slices as scored by fold k's
    model, the one that did not train on them. 0 where F1 is undefined (no positive label
    and no positive decision), as on the vote's curves.
    """
    if len(val_labels) != len(val_probs) or len(val_labels) == 0:
        raise UsageError(
            f"out_of_fold_f1 needs labels and probabilities for each fold, got "
            f"{len(val_labels)} and {len(val_probs)}"
        )
    labels = np.concatenate([np.asarray(v).ravel() for v in val_labels]).astype(bool)
    probs = np.concatenate([np.asarray(v, dtype=float).ravel() for v in val_probs])
    if labels.shape != probs.shape:
        raise UsageError(
            f"out_of_fold_f1 needs one label per probability, got {labels.size} labels "
            f"and {probs.size} probabilities"
        )
    decisions = probs >= threshold
    tp = int(np.sum(decisions & labels))
    den = 2 * tp + int(np.sum(decisions & ~labels)) + int(np.sum(~decisions & labels))
    return 2 * tp / den if den else 0.0


def _as_folds(fold_test_probs: np.ndarray, n_folds: int, what: str) -> np.ndarray:
    probs = np.asarray(fold_test_probs, dtype=float)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise UsageError(f"{what} expects probabilities shaped (folds, slices), got {probs.shape}")
    if probs.shape[0] != n_folds:
        raise UsageError(
            f"{what} needs one entry per fold: {probs.shape[0]} folds of probabilities, "
            f"{n_folds} given"
        )
    return probs


def calibrated_mean(fold_test_probs: np.ndarray, calibrators: Sequence[Calibrator]) -> np.ndarray:
    """Mean over folds of each fold's probabilities mapped by that fold's own calibrator.

    Calibration puts every fold on the scale of observed frequencies before averaging, so
    the mean no longer mixes a timid fold with a bold one. Each calibrator must have been
    fitted on its fold's validation predictions; the caller then picks the threshold on
    the calibrated validation curves, as the vote does. Returns (slices,).
    """
    probs = _as_folds(fold_test_probs, len(calibrators), "calibrated_mean")
    return np.mean([cal.apply(row) for cal, row in zip(calibrators, probs)], axis=0)


def fold_votes(
    fold_test_probs: np.ndarray, fold_thresholds: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Each fold decides at its own threshold; the folds then vote.

    Returns (scores, decisions), each (slices,): the score is the fraction of folds whose
    probability is >= that fold's threshold, and a slice is ICH when the score is >= 0.5,
    i.e. a majority, with a tie (possible with an even number of folds) counted as ICH,
    since a missed haemorrhage costs more than a second look. Unlike the built-in
    `majority` rule, no threshold is shared, so no fold is judged on another's scale.
    """
    thresholds = np.asarray(fold_thresholds, dtype=float)
    if thresholds.ndim != 1:
        raise UsageError(f"fold_votes needs one threshold per fold, got shape {thresholds.shape}")
    probs = _as_folds(fold_test_probs, thresholds.size, "fold_votes")
    scores = (probs >= thresholds[:, None]).mean(axis=0)
    return scores, scores >= MAJORITY
