"""What the runner hands the store: plain records, one per table row family.

The store (ichbench.store) is the only module that turns these into SQL; the runner
never writes SQL and the store never computes a metric.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

METRIC_NAMES = ("sensitivity", "specificity", "precision", "f1", "accuracy", "auc")


@dataclass
class MetricRow:
    """One row of `metrics`: a model ('fold' or 'vote') on a split at a scope."""

    model: str  # 'fold' | 'vote'
    fold: int | None  # None for the vote
    scope: str  # 'slice' | 'patient'
    split: str  # 'val' | 'test'
    threshold: float
    sensitivity: float | None
    specificity: float | None
    precision: float | None
    f1: float | None
    accuracy: float | None
    auc: float | None
    tp: int
    fp: int
    tn: int
    fn: int
    n: int
    # 95% confidence intervals, (lo, hi) per metric name in METRIC_NAMES
    ci: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    ci_method: str = ""
    # calibration of the scores (slice level; None where the scores are no probabilities)
    brier: float | None = None
    ece: float | None = None

    def as_row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k not in ("ci",)}
        for name in METRIC_NAMES:
            lo, hi = self.ci.get(name, (None, None))
            row[f"{name}_lo"] = lo
            row[f"{name}_hi"] = hi
        return row


@dataclass
class Predictions:
    """Columnar predictions: one entry per (split, slice)."""

    split: np.ndarray  # str: 'val' | 'test'
    patient_id: np.ndarray  # int64
    slice: np.ndarray  # int64, 1-based slice number
    label: np.ndarray  # int64
    prob: np.ndarray  # float64

    def __len__(self) -> int:
        return int(self.prob.shape[0])


@dataclass
class PatientDecisions:
    """Columnar patient-level decisions of one model: one entry per (split, patient), as
    the run's patient rule made them from that model's slice decisions. Stored, so a
    reader never needs the rule plugin to show them."""

    split: np.ndarray  # str: 'val' | 'test'
    patient_id: np.ndarray  # int64
    label: np.ndarray  # int64: 1 if any of the patient's slices is ICH
    score: np.ndarray  # float64: the rule's patient score
    decision: np.ndarray  # bool: the rule's patient decision

    def __len__(self) -> int:
        return int(self.patient_id.shape[0])

    @classmethod
    def concat(cls, parts: list[PatientDecisions]) -> PatientDecisions:
        return cls(
            *(
                np.concatenate([getattr(p, name) for p in parts])
                for name in ("split", "patient_id", "label", "score", "decision")
            )
        )


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_f1: float
    wall_s: float


@dataclass
class FoldRecord:
    fold: int
    threshold: float  # the fold's own threshold: argmax of its validation curve
    best_epoch: int
    train_ich_before: int
    train_healthy_before: int
    train_ich: int  # after the strategies: samples per epoch
    train_healthy: int
    added: int
    removed: int
    train_patients: list[int]
    val_patients: list[int]
    wall_s: float
    curve: np.ndarray  # F1 at THRESHOLDS on the validation fold
    metrics: list[MetricRow]
    predictions: Predictions
    epochs: list[EpochRecord] = field(default_factory=list)
    checkpoint: str | None = None  # path of the kept checkpoint, relative to the run folder
    status: str = "finished"
    compiled: bool = False  # trained through torch.compile: same protocol, other numerics
    patients: PatientDecisions | None = None  # the fold model's patient decisions (val, test)
    notes: dict[str, Any] = field(default_factory=dict)  # the strategies' TrainPlan.notes
    outer: int = 0  # the outer fold whose development patients this fold splits
    # with a second stage: float32 (slices, D) embeddings of the predictions' slices, in
    # their order; kept in the run folder's fold file, not in the store
    embeddings: np.ndarray | None = None

    @property
    def key(self) -> tuple[int, int]:
        """(outer fold, fold): the fold's identity within its run."""
        return (self.outer, self.fold)


@dataclass
class RunRecord:
    run_id: str
    dataset: str
    dataset_hash: str
    config: dict[str, Any]
    config_hash: str
    backbone: str
    strategies: list[str]
    seed: int
    preset: str
    device: str
    pretrained: bool
    pretrained_source: str | None
    versions: dict[str, str]
    git_sha: str | None
    test_patients: list[int]  # outer fold 0's test patients
    folds: dict[int, dict[str, list[int]]]  # outer fold 0's: fold -> {'train', 'val'}
    split_hash: str
    grid_id: str | None = None
    status: str = "running"
    plugins: dict[str, str] = field(default_factory=dict)  # distribution -> version, those used
    owner: str | None = None  # HOST:PID:START of the process running it (see ichbench.liveness)
    # the outer folds after the first, each {'test': [...], 'folds': {...}} as above
    more_outers: list[dict[str, Any]] = field(default_factory=list)
    # when the run was created (UTC, ISO 8601 without a zone): the instant its id is made
    # of, kept here so that a record taken into the store later keeps it
    started_at: str | None = None
    # what the user calls the run: labels, no part of its configuration or its hash
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    note: str | None = None

    def outer_splits(self) -> list[tuple[list[int], dict[int, dict[str, list[int]]]]]:
        """(test patients, folds) of every outer fold, the first one first."""
        rest = [
            (list(o["test"]), {int(k): v for k, v in o["folds"].items()}) for o in self.more_outers
        ]
        return [(list(self.test_patients), self.folds), *rest]


@dataclass
class VoteRecord:
    """The vote of one outer fold's fold models (`outer` its index), or the run's headline
    result (`outer` None): with one outer fold, that fold's vote itself; with several,
    every outer fold's test decisions pooled, each patient tested once (no threshold or
    curve of its own: each outer fold cut at its own)."""

    threshold: float  # argmax of the mean validation curve (NaN when pooled)
    mean_curve: np.ndarray
    metrics: list[MetricRow]
    predictions: Predictions  # the ensemble's test probabilities (fold NULL in the store)
    wall_s: float = 0.0
    patients: PatientDecisions | None = None  # the vote's patient decisions (val, test)
    outer: int | None = None
    # what the fold models' validation results say against trusting this vote
    warnings: list[dict[str, Any]] = field(default_factory=list)
    # the ensemble rule's decision on each test slice, aligned with `predictions` (a rule
    # may decide otherwise than score >= threshold); None when not recorded
    decisions: np.ndarray | None = None
    # the calibrators fitted on each fold's validation predictions, when the ensemble
    # rule calibrates folds: [{outer, fold, kind, params}]
    calibration: list[dict[str, Any]] = field(default_factory=list)
