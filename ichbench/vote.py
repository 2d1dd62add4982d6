"""The study's decision policy: per-fold F1-vs-threshold curves and the voting threshold."""

from __future__ import annotations

import numpy as np

THRESHOLDS = np.round(np.arange(0, 101) / 100, 2)
"""0.00, 0.01, ..., 1.00: the grid on which every curve is computed and stored."""


def f1_curve(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """F1 of `probs >= t` for every t in THRESHOLDS (0 where F1 is undefined)."""
    labels = np.asarray(labels).astype(bool)
    decisions = np.asarray(probs)[None, :] >= THRESHOLDS[:, None]
    tp = (decisions & labels).sum(axis=1)
    fp = (decisions & ~labels).sum(axis=1)
    fn = (~decisions & labels).sum(axis=1)
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def best_threshold(curve: np.ndarray) -> float:
    """The threshold at the curve's maximum (the lowest one on ties)."""
    return float(THRESHOLDS[int(np.argmax(curve))])


def voting_threshold(curves: list[np.ndarray]) -> tuple[float, np.ndarray]:
    """Argmax of the mean of the fold curves, and that mean curve."""
    mean = np.mean(np.stack(curves), axis=0)
    return best_threshold(mean), mean


def patient_decisions(
    patient_ids: np.ndarray,
    slice_numbers: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    decisions: np.ndarray,
    rule,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Apply a patient rule to each patient's slices in slice order.

    Returns (patients, patient labels, patient scores, patient decisions).
    """
    patients = np.unique(patient_ids)
    p_labels, p_scores, p_decisions = [], [], []
    for pid in patients:
        rows = np.flatnonzero(patient_ids == pid)
        rows = rows[np.argsort(slice_numbers[rows], kind="stable")]
        score, decision = rule.decide(scores[rows], decisions[rows].astype(bool), threshold)
        p_labels.append(int(labels[rows].max()))
        p_scores.append(float(score))
        p_decisions.append(bool(decision))
    return patients, np.array(p_labels), np.array(p_scores), np.array(p_decisions)
