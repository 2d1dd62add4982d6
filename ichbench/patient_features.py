"""What a learned patient rule sees of one patient: a handful of numbers from its slices.

The paper's rule calls a patient ICH as soon as one slice is, so a single spurious slice
makes a false alarm while a real bleed usually shows on several neighbouring slices. A
learned rule weighs that evidence instead: it summarises each patient's slice scores and
decisions (in slice order) as `FEATURE_NAMES` and fits a small model on patients whose
labels it may see.

The contract between the core and a rule that fits:

- The rule's class has `fits = True`, a marker the core tests before calling `fit`.
- `rule.fit(patients, threshold) -> PatientRule` takes a sequence of `PatientSlices` (one
  per patient, slices in slice order, decisions cut at `threshold`: the voting threshold
  for the vote, the fold's own threshold for a fold) and returns a NEW fitted rule. The
  object it is called on is left unchanged, because one plugin object serves several fits
  (each fold, and the vote).
- The core fits only on out-of-fold validation patients, never on test patients.
- The fitted rule has `decide(scores, decisions, threshold) -> (score, decision)` like every
  patient rule, and a JSON-serialisable dict `fitted`, stored with the run, that says what
  was learned and from how many patients, with `fitted["fallback"]` a sentence when the
  rule could not be fitted and fell back to a fixed rule, else None.
- `decide` on a rule that has not been fitted raises: it has nothing to decide with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FEATURE_NAMES: tuple[str, ...] = (
    "max_score",
    "topk_mean",
    "flagged_count",
    "longest_flagged_run",
    "argmax_position",
)
"""The columns of `patient_features` and `features_matrix`, in order."""


@dataclass(frozen=True, eq=False)
class PatientSlices:
    """One patient as a fittable rule learns from it: slice scores and slice decisions in
    slice order, and the patient's label (1 = ICH, 0 = healthy).

    Compared by identity (`eq=False`): element-wise array comparison has no single truth
    value, and nothing needs two patients compared by content.
    """

    scores: np.ndarray  # float, slice order
    decisions: np.ndarray  # bool, one per score
    label: int  # 1 = ICH, 0 = healthy

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=float).ravel()
        decisions = np.asarray(self.decisions, dtype=bool).ravel()
        if scores.shape != decisions.shape:
            raise ValueError(
                f"a patient needs one decision per slice score, got {scores.shape[0]} "
                f"scores and {decisions.shape[0]} decisions"
            )
        label = int(self.label)
        if label not in (0, 1):
            raise ValueError(f"a patient label is 0 (healthy) or 1 (ICH), got {self.label!r}")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "decisions", decisions)
        object.__setattr__(self, "label", label)


def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for flag in flags.tolist():
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def patient_features(scores: np.ndarray, decisions: np.ndarray, k: int) -> np.ndarray:
    """The `FEATURE_NAMES` of one patient, slices in slice order: the highest slice score,
    the mean of the k highest (all of them if fewer), how many slices are flagged (at or
    above the slice threshold), the longest run of consecutive flagged slices, and where
    the highest score sits (its index over n - 1; 0.5 for a single slice, the middle,
    so that one slice says nothing about position). A patient without slices is all zeros.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = np.asarray(scores, dtype=float).ravel()
    d = np.asarray(decisions, dtype=bool).ravel()
    if s.shape != d.shape:
        raise ValueError(
            f"a patient needs one decision per slice score, got {s.shape[0]} "
            f"scores and {d.shape[0]} decisions"
        )
    n = s.size
    if n == 0:
        return np.zeros(len(FEATURE_NAMES))
    top = np.sort(s)[::-1][:k]
    position = 0.5 if n == 1 else int(np.argmax(s)) / (n - 1)
    return np.array(
        [s.max(), top.mean(), float(d.sum()), float(_longest_run(d)), position], dtype=float
    )


def features_matrix(patients: Sequence[PatientSlices], k: int) -> np.ndarray:
    """`patient_features` of many patients at once, one row each (shape (patients, 5)).

    Patients are padded to the longest one (scores with -inf, decisions with False) so each
    feature is one array operation over all patients, rather than a Python loop per patient
    as the fold and vote fits each featurise every validation patient.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    count = len(patients)
    lengths = np.array([p.scores.size for p in patients], dtype=int)
    width = int(lengths.max()) if count else 0
    out = np.zeros((count, len(FEATURE_NAMES)))
    if count == 0 or width == 0:
        return out
    scores = np.full((count, width), -np.inf)
    flags = np.zeros((count, width), dtype=bool)
    for row, p in enumerate(patients):
        scores[row, : p.scores.size] = p.scores
        flags[row, : p.decisions.size] = p.decisions
    has = lengths > 0
    columns = np.arange(width)

    top = -np.sort(-scores, axis=1)  # descending, padding last
    taken = np.minimum(lengths, k)
    in_top = columns[None, :] < taken[:, None]
    top_sum = np.where(in_top, top, 0.0).sum(axis=1)

    # run length ending at each slice: its index minus the index of the last unflagged
    # slice at or before it (-1 when there is none)
    last_unflagged = np.maximum.accumulate(np.where(flags, -1, columns[None, :]), axis=1)
    runs = columns[None, :] - last_unflagged

    argmax = np.argmax(scores, axis=1)
    position = np.where(lengths > 1, argmax / np.maximum(lengths - 1, 1), 0.5)

    out[has, 0] = top[has, 0]
    out[has, 1] = top_sum[has] / taken[has]
    out[:, 2] = flags.sum(axis=1)
    out[:, 3] = runs.max(axis=1)
    out[has, 4] = position[has]
    return out
