"""Classification metrics at a threshold, with 95% confidence intervals.

Point estimates come from the confusion counts (scikit-learn's confusion_matrix and
roc_auc_score); intervals come from a patient-level bootstrap for slice metrics
(slices of one patient are not independent) and from Wilson intervals for the
proportions at patient level, where each patient is one independent trial.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from ichbench.records import METRIC_NAMES, MetricRow

N_BOOTSTRAP = 1000
Z95 = 1.959963984540054


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def point_metrics(
    labels: np.ndarray, decisions: np.ndarray, scores: np.ndarray | None = None
) -> dict:
    labels = np.asarray(labels).astype(int)
    decisions = np.asarray(decisions).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, decisions, labels=[0, 1]).ravel())
    auc = None
    if scores is not None and 0 < labels.sum() < len(labels):
        auc = float(roc_auc_score(labels, scores))
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    return {
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "auc": auc,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": int(len(labels)),
    }


def wilson(successes: int, trials: int) -> tuple[float | None, float | None]:
    if trials == 0:
        return None, None
    p = successes / trials
    denom = 1 + Z95**2 / trials
    centre = (p + Z95**2 / (2 * trials)) / denom
    half = Z95 * np.sqrt(p * (1 - p) / trials + Z95**2 / (4 * trials**2)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def weighted_auc(weights_pos: np.ndarray, weights_neg: np.ndarray) -> np.ndarray:
    """AUC for many resamples at once: weights (B, U) per unique score, ascending."""
    below = np.cumsum(weights_neg, axis=1) - weights_neg
    num = (weights_pos * (below + 0.5 * weights_neg)).sum(axis=1)
    den = weights_pos.sum(axis=1) * weights_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def rates_of(tp, fp, tn, fn) -> dict[str, np.ndarray]:
    """The five rate metrics from confusion counts (scalars or arrays of resamples)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "precision": tp / (tp + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "accuracy": (tp + tn) / (tp + tn + fp + fn),
        }


def bootstrap_ci(
    labels: np.ndarray,
    decisions: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, tuple[float | None, float | None]]:
    """Percentile 95% intervals, resampling whole groups (patients) with replacement.

    Vectorised: each resample is a vector of group multiplicities, so the confusion
    counts and the AUC of all resamples are a few matrix products.
    """
    labels = np.asarray(labels).astype(int)
    decisions = np.asarray(decisions).astype(int)
    _, group_index = np.unique(groups, return_inverse=True)
    n_groups = group_index.max() + 1 if len(group_index) else 0
    if n_groups == 0:
        return {name: (None, None) for name in METRIC_NAMES}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    mult = np.zeros((n_boot, n_groups))
    np.add.at(mult, (np.repeat(np.arange(n_boot), n_groups), draws.ravel()), 1)

    def per_group(mask: np.ndarray) -> np.ndarray:
        return np.bincount(group_index[mask], minlength=n_groups).astype(float)

    pos, neg = labels == 1, labels == 0
    tp = mult @ per_group(pos & (decisions == 1))
    fn = mult @ per_group(pos & (decisions == 0))
    fp = mult @ per_group(neg & (decisions == 1))
    tn = mult @ per_group(neg & (decisions == 0))
    samples = rates_of(tp, fp, tn, fn)

    uniq, value_index = np.unique(np.asarray(scores, dtype=float), return_inverse=True)
    pos_table = np.zeros((n_groups, len(uniq)))
    neg_table = np.zeros((n_groups, len(uniq)))
    np.add.at(pos_table, (group_index[pos], value_index[pos]), 1)
    np.add.at(neg_table, (group_index[neg], value_index[neg]), 1)
    samples["auc"] = weighted_auc(mult @ pos_table, mult @ neg_table)

    out: dict[str, tuple[float | None, float | None]] = {}
    for name in METRIC_NAMES:
        values = samples[name]
        values = values[np.isfinite(values)]
        if len(values) < n_boot // 2:
            out[name] = (None, None)
        else:
            lo, hi = np.percentile(values, [2.5, 97.5])
            out[name] = (float(lo), float(hi))
    return out


def slice_metrics(
    model: str,
    fold: int | None,
    split: str,
    threshold: float,
    labels: np.ndarray,
    scores: np.ndarray,
    decisions: np.ndarray,
    patient_ids: np.ndarray,
    *,
    seed: int = 0,
) -> MetricRow:
    point = point_metrics(labels, decisions, scores)
    ci = bootstrap_ci(labels, decisions, scores, patient_ids, seed=seed)
    return MetricRow(
        model=model,
        fold=fold,
        scope="slice",
        split=split,
        threshold=threshold,
        ci=ci,
        ci_method="patient-bootstrap",
        **point,
        **calibration_of(labels, scores),
    )


def calibration_of(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Brier score and expected calibration error of slice scores read as probabilities;
    None for both where they cannot be (no slices, or a score outside [0, 1] or NaN)."""
    from ichbench import calibration

    s = np.asarray(scores, dtype=float)
    if s.size == 0 or not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        return {"brier": None, "ece": None}
    y = np.asarray(labels).astype(int)
    return {"brier": calibration.brier(y, s), "ece": calibration.ece(y, s)}


def patient_metrics(
    model: str,
    fold: int | None,
    split: str,
    threshold: float,
    labels: np.ndarray,
    scores: np.ndarray,
    decisions: np.ndarray,
    *,
    seed: int = 0,
) -> MetricRow:
    """One row per patient in the inputs: Wilson intervals for proportions, bootstrap
    for F1 and AUC."""
    point = point_metrics(labels, decisions, scores)
    boot = bootstrap_ci(labels, decisions, scores, np.arange(len(labels)), seed=seed)
    tp, fp, tn, fn = point["tp"], point["fp"], point["tn"], point["fn"]
    ci = {
        "sensitivity": wilson(tp, tp + fn),
        "specificity": wilson(tn, tn + fp),
        "precision": wilson(tp, tp + fp),
        "accuracy": wilson(tp + tn, tp + tn + fp + fn),
        "f1": boot["f1"],
        "auc": boot["auc"],
    }
    return MetricRow(
        model=model,
        fold=fold,
        scope="patient",
        split=split,
        threshold=threshold,
        ci=ci,
        ci_method="wilson+bootstrap",
        **point,
    )
