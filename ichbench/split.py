"""The patient-level split: a held-out test set, then k stratified, grouped folds; or,
nested, K outer folds of patients each playing the test set once, with k inner folds
made on the other patients.

Slices of one patient are never split apart: every assignment is made on patients and
checked by `check_no_leakage` (and, across outer folds, `check_outer`), which the runner
calls before any training starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from ichbench.config import check_folds, check_outer_count, check_test_size
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


def patient_labels(patient_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The patients (sorted) and each one's label: ICH if any of its slices is."""
    patient_ids = np.asarray(patient_ids)
    labels = np.asarray(labels)
    patients = np.unique(patient_ids)
    return patients, np.array([labels[patient_ids == p].max() for p in patients])


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
    patients, patient_label = patient_labels(patient_ids, labels)
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
    split = Split(
        tuple(sorted(int(p) for p in test)),
        _inner_folds(patient_ids, labels, dev, n_folds, seed),
        seed,
    )
    check_no_leakage(split)
    check_each_set_has_both_classes(split, dict(zip(patients.tolist(), patient_label.tolist())))
    return split


def _inner_folds(
    patient_ids: np.ndarray, labels: np.ndarray, dev: np.ndarray, n_folds: int, seed: int
) -> tuple[Fold, ...]:
    """`n_folds` train/validation folds of the `dev` patients, stratified by slice label
    with patients as groups (the study's folds)."""
    dev_rows = np.isin(patient_ids, dev)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for k, (tr, va) in enumerate(
        splitter.split(np.zeros(dev_rows.sum()), labels[dev_rows], groups=patient_ids[dev_rows])
    ):
        train_p = np.unique(patient_ids[dev_rows][tr])
        val_p = np.unique(patient_ids[dev_rows][va])
        folds.append(Fold(k, tuple(int(p) for p in train_p), tuple(int(p) for p in val_p)))
    return tuple(folds)


TrialKey = tuple[int, int]
"""(outer fold, inner fold): one trial of a run, one fold model to train."""


@dataclass(frozen=True)
class NestedSplit:
    """A run's whole split: one `Split` per outer fold. With one outer fold it is the
    study's single held-out split, and hashes as that split always has (so runs made
    before outer folds existed resume and compare unchanged)."""

    outers: tuple[Split, ...]

    def __len__(self) -> int:
        return len(self.outers)

    def __getitem__(self, outer: int) -> Split:
        return self.outers[outer]

    def trials(self) -> list[TrialKey]:
        return [(o, f.index) for o, split in enumerate(self.outers) for f in split.folds]

    def fold(self, key: TrialKey | int) -> tuple[Split, Fold]:
        """The outer fold's split and the fold of `key`; a bare fold number is a fold of
        outer fold 0 (of the study's single split)."""
        outer, fold = key if isinstance(key, tuple) else (0, key)
        return self.outers[outer], self.outers[outer].folds[fold]

    @property
    def test(self) -> tuple[int, ...]:
        """Every patient tested, across the outer folds (each once)."""
        return tuple(sorted(p for split in self.outers for p in split.test))

    @property
    def hash(self) -> str:
        if len(self.outers) == 1:
            return self.outers[0].hash
        blob = json.dumps([s.as_dict() for s in self.outers], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def make_nested_split(
    patient_ids: np.ndarray,
    labels: np.ndarray,
    *,
    outer: int = 1,
    n_folds: int = 5,
    test_size: float = 0.2,
    seed: int = 0,
) -> NestedSplit:
    """The run's split. `outer=1`: the study's single held-out split (`make_split`).
    `outer=K`: K outer folds of patients, stratified by patient label, each the test set
    of one outer fold while its other patients are split into `n_folds` inner folds as
    the study splits its development set; every patient is tested exactly once."""
    check_outer_count(outer)
    if outer == 1:
        return NestedSplit(
            (make_split(patient_ids, labels, n_folds=n_folds, test_size=test_size, seed=seed),)
        )
    check_folds(n_folds)
    patient_ids = np.asarray(patient_ids)
    labels = np.asarray(labels)
    patients, patient_label = patient_labels(patient_ids, labels)
    n_ich = int(patient_label.sum())
    n_healthy = len(patients) - n_ich
    if outer > min(n_ich, n_healthy):
        raise UsageError(
            f"--outer {outer}: the dataset has {n_ich} ICH and {n_healthy} healthy patients; "
            f"each of the {outer} outer test sets needs at least one of each, so --outer can "
            f"be at most {min(n_ich, n_healthy)}"
        )
    # each outer fold's development patients must still give every inner validation fold
    # an ICH and a healthy patient
    dev_min = min(n_ich - -(-n_ich // outer), n_healthy - -(-n_healthy // outer))
    if dev_min < n_folds:
        raise UsageError(
            f"--outer {outer} with --folds {n_folds}: the dataset has {n_ich} ICH and "
            f"{n_healthy} healthy patients; an outer fold leaves as few as {dev_min} of a "
            f"class to the {n_folds} inner validation folds, which need one each; use fewer "
            "--outer or --folds"
        )
    outer_splitter = StratifiedKFold(n_splits=outer, shuffle=True, random_state=seed)
    by_patient = dict(zip(patients.tolist(), patient_label.tolist()))
    splits = []
    for dev_idx, test_idx in outer_splitter.split(patients, patient_label):
        split = Split(
            tuple(sorted(int(p) for p in patients[test_idx])),
            _inner_folds(patient_ids, labels, patients[dev_idx], n_folds, seed),
            seed,
        )
        check_no_leakage(split)
        check_each_set_has_both_classes(split, by_patient)
        splits.append(split)
    nested = NestedSplit(tuple(splits))
    check_outer(nested, patients)
    return nested


def check_outer(nested: NestedSplit, patients: np.ndarray | None = None) -> None:
    """Raise unless the outer test sets are disjoint, every outer fold is leak-free, and
    (given the dataset's `patients`) every patient is tested exactly once."""
    seen: dict[int, int] = {}
    for outer, split in enumerate(nested.outers):
        check_no_leakage(split)
        for p in split.test:
            if p in seen:
                raise LeakageError(
                    f"Patient {p} is in the test sets of outer folds {seen[p]} and {outer}"
                )
            seen[p] = outer
    if patients is not None and len(nested.outers) > 1:
        untested = sorted(set(int(p) for p in patients) - set(seen))
        if untested:
            raise LeakageError(f"Patients {untested[:10]} are in no outer test set")


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
