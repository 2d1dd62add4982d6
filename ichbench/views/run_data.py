"""One run as the store recorded it, read through the store's typed API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ichbench.records import PatientDecisions

if TYPE_CHECKING:
    from ichbench.store import Store

_EMPTY_PREDICTIONS = {
    "fold": np.int64,
    "split": str,
    "patient_id": np.int64,
    "slice": np.int64,
    "label": np.int64,
    "prob": np.float64,
}


@dataclass
class RunData:
    """One run: its row, folds, metrics and split, and (when loaded with `results`) its
    epochs, curves, predictions and stored patient decisions."""

    run: dict[str, Any]
    metrics: list[dict[str, Any]]
    folds: list[dict[str, Any]]
    test_patients: list[int]
    fold_patients: dict[int, dict[str, list[int]]]
    epochs: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[int | None, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # fold (-1 = vote), split, patient_id, slice, label, prob
    predictions: dict[str, np.ndarray] = field(
        default_factory=lambda: {k: np.zeros(0, dtype=t) for k, t in _EMPTY_PREDICTIONS.items()}
    )
    patients: dict[int | None, PatientDecisions] = field(default_factory=dict)
    # each outer fold's vote metrics (none with the study's single split)
    outer_votes: list[dict[str, Any]] = field(default_factory=list)
    comparable: bool | None = None  # like for like with the literature (None: no result)
    outer_tests: dict[int, list[int]] = field(default_factory=dict)  # outer fold -> patients
    # the voting threshold each test patient's slices were cut at (its outer fold's)
    patient_cuts: dict[int, float] = field(default_factory=dict)

    @property
    def shown_test_patients(self) -> list[int]:
        """The test patients of the fold models a per-fold view shows (outer fold 0's with
        several outer folds: the other patients trained or validated those models)."""
        if self.outer_folds > 1:
            return list(self.outer_tests.get(0, []))
        return list(self.test_patients)

    @property
    def outer_folds(self) -> int:
        """Outer folds of patients: 1 for the study's single held-out split."""
        return int(self.config.get("outer") or 1)

    def outer_metrics(self, scope: str, split: str = "test") -> list[dict[str, Any]]:
        """Each outer fold's vote at `scope` on `split`, by outer fold."""
        return [m for m in self.outer_votes if (m["scope"], m["split"]) == (scope, split)]

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    @property
    def status(self) -> str:
        return str(self.run["status"])

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def threshold(self) -> float | None:
        return self.run.get("threshold")

    @property
    def config(self) -> dict[str, Any]:
        return self.run.get("config") or {}

    @property
    def fold_indices(self) -> list[int]:
        """The folds of the split, whether or not each was recorded."""
        return sorted(self.fold_patients) or sorted(int(f["fold"]) for f in self.folds)

    def metric(
        self, model: str, scope: str, split: str, fold: int | None = None
    ) -> dict[str, Any] | None:
        for m in self.metrics:
            if (m["model"], m["scope"], m["split"]) == (model, scope, split) and (
                model == "vote" or m["fold"] == fold
            ):
                return m
        return None

    def preds(self, fold: int | None, split: str) -> dict[str, np.ndarray]:
        """Predictions of one fold model (or the vote, fold None) on one split."""
        key = -1 if fold is None else fold
        mask = (self.predictions["fold"] == key) & (self.predictions["split"] == split)
        return {k: v[mask] for k, v in self.predictions.items()}

    def best_fold(self) -> int | None:
        """The fold whose model has the highest validation F1 (slice level)."""
        scored = [
            (m["f1"], -m["fold"])
            for m in self.metrics
            if m["model"] == "fold"
            and m["scope"] == "slice"
            and m["split"] == "val"
            and m["f1"] is not None
        ]
        return -max(scored)[1] if scored else (self.fold_indices[0] if self.folds else None)


def load_run_data(store: Store, run_id: str, *, results: bool = True) -> RunData:
    """A run (id or unique prefix) from the store; raises StoreError for an unknown id.
    `results=False` skips what only figures need (epochs, curves, predictions, patient
    decisions), which is all a terminal table shows."""
    run = store.get_run(run_id)
    rid = run["run_id"]
    split = store.split(rid)
    data = RunData(
        run=run,
        metrics=store.run_metrics(rid),
        folds=store.folds(rid),
        test_patients=split.test,
        fold_patients=split.folds,
        outer_votes=store.outer_votes(rid),
        comparable=store.comparable(rid),
        outer_tests=split.outer_tests,
        patient_cuts=store.patient_thresholds(rid),
    )
    if results:
        data.epochs = store.epoch_rows(rid)
        data.curves = store.curves(rid)
        data.predictions = store.prediction_columns(rid)
        data.patients = store.patient_decisions(rid)
    return data
