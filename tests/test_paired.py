"""Paired comparison of two runs: the statistics against independent computations, and
`ichbench compare A B` on two tiny real runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_run import TINY_ARGS, error_lines, interrupted_trial, run_main
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from ichbench.cli.app import main
from ichbench.metrics import point_metrics
from ichbench.paired import (
    Scored,
    compare_paired,
    delong,
    mcnemar_exact,
    multiplicities,
    paired_rows,
)
from ichbench.records import METRIC_NAMES
from ichbench.store import Store

# ------------------------------------------------------------------ DeLong


def _placements(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components by their definition, every positive against every
    negative: psi = 1 if the positive scores higher, 1/2 on a tie."""
    x, y = scores[labels == 1], scores[labels == 0]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_the_direct_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    labels[:2] = [0, 1]
    # rounded, so that ties within and across classes occur
    a = np.round(rng.random(40) + 0.3 * labels, 1)
    b = np.round(rng.random(40) + 0.6 * labels, 1)
    result = delong(labels, a, b)
    assert result.auc_a == pytest.approx(roc_auc_score(labels, a))
    assert result.auc_b == pytest.approx(roc_auc_score(labels, b))
    m, n = int(labels.sum()), int((labels == 0).sum())
    pa, na = _placements(labels, a)
    pb, nb = _placements(labels, b)
    s10 = np.cov(np.vstack([pa, pb]))
    s01 = np.cov(np.vstack([na, nb]))
    np.testing.assert_allclose(result.cov, s10 / m + s01 / n, rtol=1e-10, atol=1e-14)
    assert pa.mean() == pytest.approx(result.auc_a)


def test_delong_identical_scores_give_p_one() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 50)
    scores = rng.random(50)
    assert delong(labels, scores, scores).p == 1.0


def test_delong_perfect_against_random_is_significant() -> None:
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], 100)
    perfect = labels + rng.random(200) * 0.5
    random = rng.random(200)
    result = delong(labels, random, perfect)
    assert result.auc_b == 1.0
    assert result.p < 1e-10
    assert result.z > 0


# ------------------------------------------------------------------ McNemar


def test_mcnemar_counts_the_discordant_patients() -> None:
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    a = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1])  # wrong on patients 1-4 and 9
    b = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])  # right on every patient
    only_b = int(((b == labels) & (a != labels)).sum())
    assert only_b == 5
    assert mcnemar_exact(labels, a, b) == pytest.approx(binomtest(5, 5, 0.5).pvalue)
    assert mcnemar_exact(labels, a, b) == pytest.approx(2 * 0.5**5)
    assert mcnemar_exact(labels, a, a) == 1.0


# ------------------------------------------------------------------ paired bootstrap


def _toy(seed: int = 5) -> tuple[Scored, Scored]:
    rng = np.random.default_rng(seed)
    n_patients = 12
    sizes = rng.integers(3, 7, n_patients)
    groups = np.repeat(np.arange(100, 100 + n_patients), sizes)
    ich = rng.random(n_patients) < 0.5
    ich[:2] = [True, False]
    labels = (np.repeat(ich, sizes) & (rng.random(len(groups)) < 0.6)).astype(int)
    labels[0] = 1
    a = np.clip(rng.random(len(groups)) * 0.7 + 0.3 * labels, 0, 1)
    b = np.clip(rng.random(len(groups)) * 0.5 + 0.5 * labels, 0, 1)
    slices = Scored(labels, groups, a, b, a >= 0.5, b >= 0.5)
    pids = np.unique(groups)
    p_labels = np.array([labels[groups == p].max() for p in pids])
    p_a = np.array([a[groups == p].max() for p in pids])
    p_b = np.array([b[groups == p].max() for p in pids])
    return slices, Scored(p_labels, pids, p_a, p_b, p_a >= 0.5, p_b >= 0.5)


def _explicit_deltas(scored: Scored, group_ids: np.ndarray, mult: np.ndarray) -> dict:
    """B - A of every resample by building the resampled data set row by row."""
    deltas = {name: [] for name in METRIC_NAMES}
    for weights in mult:
        rows = np.concatenate(
            [
                np.repeat(np.flatnonzero(scored.groups == g), int(w))
                for g, w in zip(group_ids, weights, strict=True)
            ]
        )
        labels = scored.labels[rows]
        pa = point_metrics(labels, scored.decisions_a[rows], scored.scores_a[rows])
        pb = point_metrics(labels, scored.decisions_b[rows], scored.scores_b[rows])
        for name in METRIC_NAMES:
            ok = pa[name] is not None and pb[name] is not None
            deltas[name].append(pb[name] - pa[name] if ok else np.nan)
    return deltas


def test_paired_bootstrap_matches_resampling_by_hand() -> None:
    slices, patients = _toy()
    rows = compare_paired(slices, patients, n_boot=60, seed=7)
    group_ids = np.unique(patients.groups)
    mult = multiplicities(len(group_ids), 60, 7)
    for scored, scope in ((slices, "slice"), (patients, "patient")):
        point_a = point_metrics(scored.labels, scored.decisions_a, scored.scores_a)
        point_b = point_metrics(scored.labels, scored.decisions_b, scored.scores_b)
        deltas = _explicit_deltas(scored, group_ids, mult)
        for row in (r for r in rows if r.scope == scope):
            assert row.a == point_a[row.name] and row.b == point_b[row.name]
            assert row.diff is not None
            assert row.diff == pytest.approx(point_b[row.name] - point_a[row.name])
            values = np.asarray(deltas[row.name], dtype=float)
            values = values[np.isfinite(values)]
            lo, hi = np.percentile(values, [2.5, 97.5])
            assert (row.lo, row.hi) == (pytest.approx(lo), pytest.approx(hi)), row


def test_paired_rows_carry_their_tests_and_are_seeded() -> None:
    slices, patients = _toy()
    rows = compare_paired(slices, patients, n_boot=200, seed=1)
    assert [(r.scope, r.name) for r in rows] == [
        (s, n) for s in ("slice", "patient") for n in METRIC_NAMES
    ]
    tests = {(r.scope, r.name): (r.test, r.p) for r in rows if r.test}
    assert set(tests) == {("slice", "auc"), ("patient", "accuracy")}
    assert tests[("slice", "auc")][1] == delong(slices.labels, slices.scores_a, slices.scores_b).p
    assert rows == compare_paired(slices, patients, n_boot=200, seed=1)
    assert rows != compare_paired(slices, patients, n_boot=200, seed=2)
    same = compare_paired(
        Scored(
            *[getattr(slices, f) for f in ("labels", "groups", "scores_a", "scores_a")],
            slices.decisions_a,
            slices.decisions_a,
        ),
        Scored(
            *[getattr(patients, f) for f in ("labels", "groups", "scores_a", "scores_a")],
            patients.decisions_a,
            patients.decisions_a,
        ),
        n_boot=100,
    )
    for row in same:
        assert row.diff in (0.0, None)
        assert row.p in (None, 1.0)


# ------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three finished tiny runs in one store: A and B share a split (seed 0), C has
    another seed and so other test patients."""
    root = tmp_path_factory.mktemp("paired")
    db = root / "runs.duckdb"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_CACHE", str(root / "cache"))
        mp.setenv("ICHBENCH_LOAD_PLUGINS", "")
        mp.setenv("HF_HUB_OFFLINE", "1")
        for extra in ([], ["--weight", "ich:4"], ["--seed", "3"]):
            try:
                main(["run", *TINY_ARGS, *extra, "--db", str(db)])
            except SystemExit as exit_info:
                assert exit_info.code in (0, None)
    store = Store(db, create=False)
    ids = [r["run_id"] for r in reversed(store.list_runs())]
    assert len(ids) == 3
    a, b, c = ids
    assert sorted(store.split(a).test) == sorted(store.split(b).test)
    assert sorted(store.split(a).test) != sorted(store.split(c).test)
    return db, store, a, b, c


def test_compare_two_runs_prints_the_paired_table(runs, capsys) -> None:
    db, _, a, b, _ = runs
    code, out, err = run_main(capsys, "compare", a, b, "--db", str(db))
    assert code == 0, err
    assert "Paired" in out and "B\u2212A" in out
    assert "DeLong" in out and "McNemar" in out
    assert "tested different patients" not in out


def test_compare_json_has_paired_rows_matching_the_stored_vote(runs, capsys) -> None:
    db, store, a, b, _ = runs
    code, out, _ = run_main(capsys, "compare", a, b, "--json", "--db", str(db))
    assert code == 0
    data = json.loads(out)
    assert {"runs", "baselines", "paired"} <= set(data)
    paired = data["paired"]
    assert (paired["a"], paired["b"], paired["note"]) == (a, b, None)
    assert len(paired["rows"]) == 2 * len(METRIC_NAMES)
    for run_id, side in ((a, "a"), (b, "b")):
        stored = {(m["scope"], m["model"], m["split"]): m for m in store.run_metrics(run_id)}
        for row in paired["rows"]:
            vote = stored[(row["scope"], "vote", "test")]
            if vote[row["name"]] is None:
                assert row[side] is None
            else:
                assert row[side] == pytest.approx(vote[row["name"]]), (run_id, row)
    for row in paired["rows"]:
        if row["diff"] is not None and row["lo"] is not None:
            assert row["lo"] <= row["diff"] + 1e-9 or row["hi"] >= row["diff"] - 1e-9
        if row["p"] is not None:
            assert 0.0 <= row["p"] <= 1.0


def test_compare_a_run_with_itself_is_a_usage_error(runs, capsys) -> None:
    db, _, a, _, _ = runs
    code, out, err = run_main(capsys, "compare", a, a, "--db", str(db))
    assert code == 2
    assert len(error_lines(err)) == 1 and out == ""


def test_runs_with_other_test_patients_get_one_line(runs, capsys) -> None:
    db, _, a, _, c = runs
    code, out, _ = run_main(capsys, "compare", a, c, "--db", str(db))
    assert code == 0
    lines = [line for line in out.splitlines() if "tested different patients" in line]
    assert lines == [
        f"Runs {a} and {c} tested different patients: no paired test; "
        "the CIs above are each run's own"
    ]
    assert "Paired" not in out
    code, out, _ = run_main(capsys, "compare", a, c, "--json", "--db", str(db))
    paired = json.loads(out)["paired"]
    assert paired["rows"] == [] and "different patients" in paired["note"]


def test_compare_refuses_runs_on_other_data_or_without_a_result(
    runs, capsys, tmp_path, monkeypatch
) -> None:
    import shutil

    from ichbench.protocol import RunProtocol

    db, _, a, _, _ = runs
    own = tmp_path / "runs.duckdb"
    shutil.copy(db, own)  # the module's store stays as the other tests expect it
    code, _, err = run_main(
        capsys, "run", *TINY_ARGS, "--data", "synthetic:10,2,32", "--db", str(own)
    )
    assert code == 0, err
    other = Store(own, create=False).list_runs()[0]["run_id"]
    monkeypatch.setattr(RunProtocol, "fold_trial", interrupted_trial((0, 1)))
    code, _, err = run_main(capsys, "run", *TINY_ARGS, "--seed", "5", "--db", str(own))
    monkeypatch.undo()
    assert code == 130, err
    unfinished = Store(own, create=False).list_runs(status="interrupted")[0]["run_id"]
    before = own.read_bytes()
    for pair, message in (
        ((a, other), "were made on different datasets"),
        ((a, unfinished), f"Run {unfinished} is interrupted: it has no result to compare"),
        ((unfinished, a), f"Run {unfinished} is interrupted"),
    ):
        code, out, err = run_main(capsys, "compare", *pair, "--db", str(own))
        assert code == 2, err
        assert len(error_lines(err)) == 1 and message in error_lines(err)[0] and out == ""
    assert own.read_bytes() == before


def test_a_grid_marks_the_runs_it_cannot_tell_from_the_best(runs) -> None:
    from ichbench.views.paired import indistinguishable_from_best

    _, store, a, b, c = runs
    ranked = store.summaries([a, b, c])
    marks = indistinguishable_from_best(store, ranked, n_boot=400)
    assert marks[a] is True  # the best is the best
    assert marks[c] is None  # another seed: other validation patients, nothing to pair
    # A and B share their validation slices: the mark is the paired CI of F1(B) - F1(A)
    from ichbench.views.paired import _oof_validation

    oof_a, oof_b = _oof_validation(store, ranked[0]), _oof_validation(store, ranked[1])
    assert np.array_equal(oof_a["patient_id"], oof_b["patient_id"])
    groups = np.unique(oof_a["patient_id"])
    mult = multiplicities(len(groups), 400, 0)
    scored = Scored(
        oof_a["label"],
        oof_a["patient_id"],
        oof_a["prob"],
        oof_b["prob"],
        oof_a["decision"],
        oof_b["decision"],
    )
    f1 = next(r for r in paired_rows(scored, "slice", mult, groups) if r.name == "f1")
    assert marks[b] is (f1.lo <= 0.0 <= f1.hi)


def test_the_paired_patients_view_gives_mcnemars_discordant_pairs(runs, capsys) -> None:
    db, store, a, b, c = runs
    _, rows = store.query(
        "SELECT count(*) FILTER (WHERE correct_a AND NOT correct_b), "
        "count(*) FILTER (WHERE correct_b AND NOT correct_a), count(*) "
        f"FROM paired_patients WHERE run_a = '{a}' AND run_b = '{b}'"
    )
    ((a_only, b_only, patients),) = rows
    assert patients == len(store.split(a).test)
    code, out, _ = run_main(capsys, "compare", a, b, "--json", "--db", str(db))
    mcnemar = next(r for r in json.loads(out)["paired"]["rows"] if r["test"] == "McNemar (exact)")
    expected = 1.0 if a_only + b_only == 0 else binomtest(b_only, a_only + b_only, 0.5).pvalue
    assert mcnemar["p"] == pytest.approx(expected)
    _, other = store.query(
        f"SELECT count(*) FROM paired_patients WHERE run_a = '{a}' AND run_b = '{c}'"
    )
    # C tested other patients: only the patients both tested are paired
    assert other[0][0] == len(set(store.split(a).test) & set(store.split(c).test))
