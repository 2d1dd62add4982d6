"""The patient-level split: a held-out test set, then k stratified, grouped folds.

Slices of one patient are never split apart: every assignment is made on patients and
checked by `check_no_leakage`, which the runner calls before any training starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from ichbench.config import check_folds, check_test_size
from ichbench.errors import LeakageError, UsageError


@dataclass(frozen=True)
class Fold:
    index: int
    train: tuple[int, ...]  # patient ids
    val: tuple[int, ...]


@dataclass(frozen=True)
class Split:
    test: tuple[int, ...]
    folds: tuple[Fold, ...]
    seed: int

    def as_dict(self) -> dict:
        return {
            "test": list(self.test),
            "folds": {f.index: {"train": list(f.train), "val": list(f.val)} for f in self.folds},
            "seed": self.seed,
        }

    @property
    def hash(self) -> str:
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def make_split(
    patient_ids: np.ndarray,
    labels: np.ndarray,
    *,
    n_folds: int = 5,
    test_size: float = 0.2,
    seed: int = 0,
) -> Split:
    """Split slices' patients into a test set and `n_folds` train/validation folds.

    `patient_ids` and `labels` are per slice; the test set is stratified by patient label
    (ICH if any slice is ICH), the folds by slice label with patients as groups.
    """
    patient_ids = np.asarray(patient_ids)
    labels = np.asarray(labels)
    patients = np.unique(patient_ids)
    patient_label = np.array([labels[patient_ids == p].max() for p in patients])
    n_ich = int(patient_label.sum())
    n_healthy = len(patients) - n_ich
    check_folds(n_folds)
    check_test_size(test_size)
    n_test = int(np.ceil(test_size * len(patients)))
    # each fold's validation set and the test set need an ICH and a healthy patient
    if min(n_ich, n_healthy) < n_folds + 1 or n_test < 2 or len(patients) - n_test < 2 * n_folds:
        raise UsageError(
            f"--folds {n_folds} with --test-size {test_size}: the dataset has {len(patients)} "
            f"patients ({n_ich} ICH, {n_healthy} healthy); each of the {n_folds} validation "
            f"folds and the test set needs at least one ICH and one healthy patient"
        )
    dev, test = train_test_split(
        patients, test_size=n_test, stratify=patient_label, random_state=seed
    )
    dev_rows = np.isin(patient_ids, dev)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for k, (tr, va) in enumerate(
        splitter.split(np.zeros(dev_rows.sum()), labels[dev_rows], groups=patient_ids[dev_rows])
    ):
        train_p = np.unique(patient_ids[dev_rows][tr])
        val_p = np.unique(patient_ids[dev_rows][va])
        folds.append(Fold(k, tuple(int(p) for p in train_p), tuple(int(p) for p in val_p)))
    split = Split(tuple(sorted(int(p) for p in test)), tuple(folds), seed)
    check_no_leakage(split)
    check_each_set_has_both_classes(split, dict(zip(patients.tolist(), patient_label.tolist())))
    return split


def check_no_leakage(split: Split) -> None:
    """Raise if any patient is in two of {train, validation, test} of any fold."""
    test = set(split.test)
    for fold in split.folds:
        train, val = set(fold.train), set(fold.val)
        for a_name, a, b_name, b in (
            ("train", train, "validation", val),
            ("train", train, "test", test),
            ("validation", val, "test", test),
        ):
            shared = a & b
            if shared:
                raise LeakageError(
                    f"Patient leakage in fold {fold.index}: patient(s) "
                    f"{sorted(shared)[:10]} in both {a_name} and {b_name}"
                )
    vals = [p for fold in split.folds for p in fold.val]
    if len(vals) != len(set(vals)):
        raise LeakageError("Patient leakage: a patient is in two validation folds")


def check_each_set_has_both_classes(split: Split, patient_label: dict[int, int]) -> None:
    def classes(ps) -> set[int]:
        return {patient_label[p] for p in ps}

    if classes(split.test) != {0, 1}:
        raise UsageError(
            f"The test set ({len(split.test)} patients) lacks an ICH or a healthy "
            "patient; use more patients or another --test-size"
        )
    for fold in split.folds:
        if classes(fold.val) != {0, 1}:
            raise UsageError(
                f"Validation fold {fold.index} ({len(fold.val)} patients) lacks an "
                "ICH or a healthy patient; use fewer --folds or more patients"
            )
