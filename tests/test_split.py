"""The patient-level split: stratified, grouped, seeded, and leak-free."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ichbench.errors import LeakageError, UsageError
from ichbench.split import (
    Fold,
    NestedSplit,
    Split,
    check_no_leakage,
    check_outer,
    make_nested_split,
    make_split,
)


def slices_of(patient_labels: list[int], rng: np.random.Generator):
    pids, labels = [], []
    for pid, ich in enumerate(patient_labels, start=49):
        n = int(rng.integers(5, 15))
        lab = np.zeros(n, dtype=int)
        if ich:
            lab[rng.integers(0, n) : n][: int(rng.integers(1, n))] = 1
            lab[n // 2] = 1
        pids += [pid] * n
        labels += lab.tolist()
    return np.array(pids), np.array(labels)


def test_split_is_patient_level_and_stratified():
    rng = np.random.default_rng(0)
    pids, labels = slices_of([1] * 18 + [0] * 22, rng)
    split = make_split(pids, labels, n_folds=5, test_size=0.2, seed=3)
    assert len(split.test) == 8
    patient_label = {p: labels[pids == p].max() for p in np.unique(pids)}
    test_ich = sum(patient_label[p] for p in split.test)
    assert 3 <= test_ich <= 5  # 45% of 8, stratified
    vals = [p for f in split.folds for p in f.val]
    assert sorted(vals + list(split.test)) == sorted(np.unique(pids).tolist())
    for fold in split.folds:
        assert set(fold.train) | set(fold.val) | set(split.test) == set(np.unique(pids).tolist())


def test_split_is_seeded():
    rng = np.random.default_rng(1)
    pids, labels = slices_of([1] * 15 + [0] * 15, rng)
    a = make_split(pids, labels, seed=7)
    b = make_split(pids, labels, seed=7)
    c = make_split(pids, labels, seed=8)
    assert a.hash == b.hash
    assert a.hash != c.hash


@settings(max_examples=40, deadline=None)
@given(
    n_ich=st.integers(7, 30),
    n_healthy=st.integers(7, 30),
    folds=st.integers(2, 6),
    seed=st.integers(0, 10_000),
    test_size=st.floats(0.1, 0.35),
)
def test_no_patient_crosses_train_val_test(n_ich, n_healthy, folds, seed, test_size):
    rng = np.random.default_rng(seed)
    pids, labels = slices_of([1] * n_ich + [0] * n_healthy, rng)
    try:
        split = make_split(pids, labels, n_folds=folds, test_size=test_size, seed=seed)
    except UsageError:
        return  # too few patients of a class for this many folds: refused, not leaked
    test = set(split.test)
    for fold in split.folds:
        train, val = set(fold.train), set(fold.val)
        assert not train & val and not train & test and not val & test
        assert train | val | test == set(np.unique(pids).tolist())


def test_leakage_guard_raises():
    split = Split(test=(1, 2), folds=(Fold(0, (3, 4, 5), (6, 2)),), seed=0)
    with pytest.raises(LeakageError, match="patient.*2.*validation and test"):
        check_no_leakage(split)
    split = Split(test=(1,), folds=(Fold(0, (3, 4), (4, 5)),), seed=0)
    with pytest.raises(LeakageError, match="train and validation"):
        check_no_leakage(split)


def test_too_many_folds_is_a_clear_error():
    rng = np.random.default_rng(0)
    pids, labels = slices_of([1] * 4 + [0] * 4, rng)
    with pytest.raises(UsageError, match="--folds 5"):
        make_split(pids, labels, n_folds=5)


def test_a_test_set_too_small_for_both_classes_is_refused_like_other_impossible_splits():
    rng = np.random.default_rng(0)
    pids, labels = slices_of([1] * 10 + [0] * 10, rng)
    with pytest.raises(UsageError) as raised:
        make_split(pids, labels, n_folds=2, test_size=0.01)
    assert str(raised.value) == (
        "--folds 2 with --test-size 0.01: the dataset has 20 patients (10 ICH, 10 healthy); "
        "each of the 2 validation folds and the test set needs at least one ICH and one "
        "healthy patient"
    )


# ------------------------------------------------------------------ outer folds


@settings(max_examples=40, deadline=None)
@given(
    n_ich=st.integers(6, 30),
    n_healthy=st.integers(6, 30),
    outer=st.integers(2, 6),
    folds=st.integers(2, 5),
    seed=st.integers(0, 10_000),
)
def test_outer_folds_test_every_patient_once_and_never_train_on_it(
    n_ich, n_healthy, outer, folds, seed
):
    rng = np.random.default_rng(seed)
    pids, labels = slices_of([1] * n_ich + [0] * n_healthy, rng)
    patients = set(np.unique(pids).tolist())
    try:
        nested = make_nested_split(pids, labels, outer=outer, n_folds=folds, seed=seed)
    except UsageError:
        return  # too few patients of a class for these folds: refused, not leaked
    assert len(nested) == outer
    tested = [p for split in nested.outers for p in split.test]
    assert sorted(tested) == sorted(patients)  # every patient exactly once
    patient_label = {p: labels[pids == p].max() for p in patients}
    for split in nested.outers:
        test = set(split.test)
        assert {patient_label[p] for p in test} == {0, 1}
        for fold in split.folds:
            train, val = set(fold.train), set(fold.val)
            assert not (train | val) & test  # the outer test set never trains or validates
            assert not train & val
            assert train | val | test == patients
    assert len(nested.trials()) == outer * folds


def test_one_outer_fold_is_the_studys_single_split_with_its_hash():
    rng = np.random.default_rng(2)
    pids, labels = slices_of([1] * 12 + [0] * 14, rng)
    single = make_split(pids, labels, n_folds=3, test_size=0.25, seed=5)
    nested = make_nested_split(pids, labels, outer=1, n_folds=3, test_size=0.25, seed=5)
    assert nested.outers == (single,) and nested.hash == single.hash
    assert make_nested_split(pids, labels, outer=3, n_folds=3, seed=5).hash != single.hash


def test_outer_folds_are_seeded():
    rng = np.random.default_rng(3)
    pids, labels = slices_of([1] * 12 + [0] * 14, rng)
    a, b, c = (make_nested_split(pids, labels, outer=4, n_folds=2, seed=s) for s in (1, 1, 2))
    assert a == b and a.hash == b.hash and a.hash != c.hash


def test_the_outer_guard_raises_on_a_patient_tested_twice_or_never():
    one = Split(test=(1, 2), folds=(Fold(0, (3, 4), (5, 6)),), seed=0)
    two = Split(test=(2, 3), folds=(Fold(0, (1, 4), (5, 6)),), seed=0)
    with pytest.raises(LeakageError, match="Patient 2 is in the test sets of outer folds 0 and 1"):
        check_outer(NestedSplit((one, two)))
    three = Split(test=(3, 4), folds=(Fold(0, (1, 2), (5, 6)),), seed=0)
    with pytest.raises(LeakageError, match=r"Patients \[5, 6\] are in no outer test set"):
        check_outer(NestedSplit((one, three)), np.arange(1, 7))


@pytest.mark.parametrize(
    ("outer", "folds", "message"),
    [
        (0, 2, "--outer 0: must be at least 1"),
        (7, 2, "--outer 7: the dataset has 6 ICH and 8 healthy patients.*at most 6"),
        (3, 5, "--outer 3 with --folds 5.*as few as 4 of a class"),
    ],
)
def test_impossible_outer_folds_are_refused(outer, folds, message):
    rng = np.random.default_rng(4)
    pids, labels = slices_of([1] * 6 + [0] * 8, rng)
    with pytest.raises(UsageError, match=message):
        make_nested_split(pids, labels, outer=outer, n_folds=folds, seed=0)
