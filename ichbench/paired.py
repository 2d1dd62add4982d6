"""Two runs tested on the same patients: is B better than A, or only different by chance?

Each run's own confidence intervals overlap long before a difference stops being real,
because both runs share the same hard and easy patients. A paired analysis cancels that
shared part: the bootstrap draws one set of patients per resample and scores both runs on
it; McNemar looks only at the patients the two runs decide differently; DeLong compares
the two AUCs through their covariance on the same slices.

Point metrics are `ichbench.metrics.point_metrics`, so a paired row states the same
numbers as each run's own table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, norm, rankdata

from ichbench.metrics import point_metrics, rates_of, weighted_auc
from ichbench.records import METRIC_NAMES

N_PAIRED_BOOTSTRAP = 2000


@dataclass(frozen=True)
class PairedRow:
    """One metric at one scope: A, B, B - A with its paired 95% CI, and where a test
    applies, its name and two-sided p-value."""

    name: str
    scope: str
    a: float | None
    b: float | None
    diff: float | None
    lo: float | None
    hi: float | None
    test: str | None = None
    p: float | None = None


@dataclass(frozen=True)
class DelongResult:
    """Both AUCs, their 2x2 covariance (DeLong), and the test of their difference."""

    auc_a: float
    auc_b: float
    cov: np.ndarray
    z: float
    p: float


@dataclass(frozen=True)
class Scored:
    """One scope's results of both runs, aligned row by row: a row is a slice (its
    patient in `groups`) or a patient (`groups` its own id)."""

    labels: np.ndarray
    groups: np.ndarray
    scores_a: np.ndarray
    scores_b: np.ndarray
    decisions_a: np.ndarray
    decisions_b: np.ndarray


# ------------------------------------------------------------------ DeLong


def delong(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DelongResult:
    """DeLong's test of AUC(A) = AUC(B) on the same cases, by the midrank algorithm of
    Sun & Xu (2014): O(n log n) instead of the O(n*m) pairwise comparisons."""
    labels = np.asarray(labels).astype(int)
    pos, neg = labels == 1, labels == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong needs at least one positive and one negative case")
    v10, v01 = [], []
    aucs = []
    for scores in (np.asarray(scores_a, float), np.asarray(scores_b, float)):
        x, y = scores[pos], scores[neg]
        tx, ty = rankdata(x), rankdata(y)
        tz = rankdata(np.concatenate([x, y]))
        aucs.append(float((tz[:m].sum() - m * (m + 1) / 2) / (m * n)))
        v10.append((tz[:m] - tx) / n)
        v01.append(1.0 - (tz[m:] - ty) / m)
    s10 = np.atleast_2d(np.cov(np.vstack(v10))) if m > 1 else np.zeros((2, 2))
    s01 = np.atleast_2d(np.cov(np.vstack(v01))) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    diff = aucs[1] - aucs[0]
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (float(np.sign(diff)) * np.inf, 0.0)
    else:
        z = diff / np.sqrt(var)
        p = float(2 * norm.sf(abs(z)))
    return DelongResult(aucs[0], aucs[1], cov, float(z), min(1.0, p))


# ------------------------------------------------------------------ McNemar


def mcnemar_exact(labels: np.ndarray, decisions_a: np.ndarray, decisions_b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: of the cases exactly one run gets right, is the
    split between A and B further from even than chance allows?"""
    labels = np.asarray(labels).astype(bool)
    right_a = np.asarray(decisions_a).astype(bool) == labels
    right_b = np.asarray(decisions_b).astype(bool) == labels
    only_a = int((right_a & ~right_b).sum())
    only_b = int((right_b & ~right_a).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_b, only_a + only_b, 0.5).pvalue)


# ------------------------------------------------------------------ paired bootstrap


def multiplicities(n_groups: int, n_boot: int, seed: int) -> np.ndarray:
    """How many times each group is drawn in each resample, (n_boot, n_groups): row r is
    `bincount(draws[r])` of `default_rng(seed).integers(0, n_groups, (n_boot, n_groups))`."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    mult = np.zeros((n_boot, n_groups))
    np.add.at(mult, (np.repeat(np.arange(n_boot), n_groups), draws.ravel()), 1)
    return mult


def _resampled(
    labels: np.ndarray,
    decisions: np.ndarray,
    scores: np.ndarray,
    group_index: np.ndarray,
    mult: np.ndarray,
) -> dict[str, np.ndarray]:
    """Every metric in every resample, the groups weighted by `mult`."""
    n_groups = mult.shape[1]

    def per_group(mask: np.ndarray) -> np.ndarray:
        return np.bincount(group_index[mask], minlength=n_groups).astype(float)

    pos, neg = labels == 1, labels == 0
    samples = rates_of(
        mult @ per_group(pos & (decisions == 1)),
        mult @ per_group(neg & (decisions == 1)),
        mult @ per_group(neg & (decisions == 0)),
        mult @ per_group(pos & (decisions == 0)),
    )
    uniq, value_index = np.unique(scores, return_inverse=True)
    pos_table = np.zeros((n_groups, len(uniq)))
    neg_table = np.zeros((n_groups, len(uniq)))
    np.add.at(pos_table, (group_index[pos], value_index[pos]), 1)
    np.add.at(neg_table, (group_index[neg], value_index[neg]), 1)
    samples["auc"] = weighted_auc(mult @ pos_table, mult @ neg_table)
    return samples


def paired_rows(
    scored: Scored,
    scope: str,
    mult: np.ndarray,
    group_ids: np.ndarray,
) -> list[PairedRow]:
    """B - A for every metric of one scope, with percentile 95% intervals over the
    resamples of patients in `mult` (columns in the order of `group_ids`)."""
    labels = np.asarray(scored.labels).astype(int)
    group_index = np.searchsorted(group_ids, scored.groups)
    point_a = point_metrics(labels, scored.decisions_a, scored.scores_a)
    point_b = point_metrics(labels, scored.decisions_b, scored.scores_b)
    boot_a = _resampled(
        labels, np.asarray(scored.decisions_a).astype(int), scored.scores_a, group_index, mult
    )
    boot_b = _resampled(
        labels, np.asarray(scored.decisions_b).astype(int), scored.scores_b, group_index, mult
    )
    rows = []
    for name in METRIC_NAMES:
        a, b = point_a[name], point_b[name]
        diff = None if a is None or b is None else b - a
        lo = hi = None
        deltas = boot_b[name] - boot_a[name]
        deltas = deltas[np.isfinite(deltas)]
        if diff is not None and len(deltas) >= len(mult) // 2:
            lo, hi = (float(v) for v in np.percentile(deltas, [2.5, 97.5]))
        rows.append(PairedRow(name, scope, a, b, diff, lo, hi))
    return rows


def compare_paired(
    slices: Scored,
    patients: Scored,
    *,
    n_boot: int = N_PAIRED_BOOTSTRAP,
    seed: int = 0,
) -> list[PairedRow]:
    """Every vote metric at slice and patient level, B - A with a paired bootstrap CI
    that resamples patients (each with all its slices, the same draw for both scopes);
    DeLong's test on the slice AUCs and McNemar's on the patient decisions."""
    group_ids = np.unique(np.asarray(patients.groups))
    if not np.array_equal(np.unique(np.asarray(slices.groups)), group_ids):
        raise ValueError("slices and patients must cover the same patients")
    mult = multiplicities(len(group_ids), n_boot, seed)
    rows = paired_rows(slices, "slice", mult, group_ids) + paired_rows(
        patients, "patient", mult, group_ids
    )
    out = []
    for row in rows:
        if row.scope == "slice" and row.name == "auc" and row.diff is not None:
            p = delong(slices.labels, slices.scores_a, slices.scores_b).p
            row = PairedRow(**{**row.__dict__, "test": "DeLong", "p": p})
        elif row.scope == "patient" and row.name == "accuracy":
            p = mcnemar_exact(patients.labels, patients.decisions_a, patients.decisions_b)
            row = PairedRow(**{**row.__dict__, "test": "McNemar (exact)", "p": p})
        out.append(row)
    return out
