"""The grid's honest estimate: each outer fold picks by validation F1 alone and is scored
on its own test patients; pooled, stored and shown."""

from __future__ import annotations

import duckdb
import numpy as np
from cli_run import TINY_ARGS, run_main

from ichbench.metrics import patient_metrics, slice_metrics
from ichbench.selection import Candidate, OuterResult, picks, pooled_choice


def _outer(val_f1, labels, scores, patients):
    labels, scores, patients = map(np.asarray, (labels, scores, patients))
    ids = np.unique(patients)
    p_labels = np.array([labels[patients == p].max() for p in ids])
    p_scores = np.array([scores[patients == p].max() for p in ids])
    return OuterResult(
        val_f1, labels, patients, scores, scores >= 0.5, p_labels, p_scores, p_scores >= 0.5
    )


def test_each_outer_fold_picks_by_validation_alone_and_the_picks_are_pooled():
    # outer 0: A validates better; outer 1: B does. Their test results are what they are.
    a = Candidate(
        "A",
        {
            0: _outer(0.8, [1, 0, 0], [0.9, 0.2, 0.6], [1, 1, 2]),
            1: _outer(0.4, [1, 0], [0.1, 0.9], [3, 4]),
        },
    )
    b = Candidate(
        "B",
        {
            0: _outer(0.7, [1, 0, 0], [0.1, 0.1, 0.1], [1, 1, 2]),
            1: _outer(0.6, [1, 0], [0.8, 0.3], [3, 4]),
        },
    )
    chosen = picks([a, b])
    assert chosen == {0: "A", 1: "B"}
    rows = pooled_choice([a, b], chosen, seed=3)
    # the reference: A's outer-0 test slices and B's outer-1 ones, computed directly
    labels = np.array([1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.2, 0.6, 0.8, 0.3])
    expected = slice_metrics(
        "vote",
        None,
        "test",
        float("nan"),
        labels,
        scores,
        scores >= 0.5,
        np.array([1, 1, 2, 3, 4]),
        seed=3,
    )
    got = next(r for r in rows if r.scope == "slice")
    assert (got.f1, got.auc, got.n, got.ci) == (expected.f1, expected.auc, 5, expected.ci)
    p = patient_metrics(
        "vote",
        None,
        "test",
        float("nan"),
        np.array([1, 0, 1, 0]),
        np.array([0.9, 0.6, 0.8, 0.3]),
        np.array([True, True, True, False]),
        seed=3,
    )
    got_p = next(r for r in rows if r.scope == "patient")
    assert (got_p.sensitivity, got_p.specificity, got_p.n) == (p.sensitivity, p.specificity, 4)


def test_a_tie_goes_to_the_first_and_an_undefined_f1_never_wins():
    a = Candidate("A", {0: _outer(0.5, [1, 0], [0.9, 0.1], [1, 2])})
    b = Candidate("B", {0: _outer(0.5, [1, 0], [0.9, 0.1], [1, 2])})
    c = Candidate("C", {0: _outer(None, [1, 0], [0.9, 0.1], [1, 2])})
    assert picks([c, a, b]) == {0: "A"}
    assert picks([c]) == {}


def test_a_grid_with_outer_folds_stores_and_shows_its_honest_estimate(tmp_path, capsys):
    db = tmp_path / "runs.duckdb"
    code, out, err = run_main(
        capsys, "grid", *TINY_ARGS, "--outer", "2", "--weight", "ich:1,4", "--db", str(db)
    )
    assert code == 0, err
    assert "pick the best, scored honestly" in out and "Picked:" in out
    con = duckdb.connect(str(db), read_only=True)
    try:
        picked = con.execute(
            "SELECT s.outer_fold, s.run_id, s.mean_val_f1, v.f1 FROM grid_selections s "
            "JOIN (SELECT run_id, outer_fold, avg(f1) AS f1 FROM metrics WHERE model = 'fold' "
            "AND scope = 'slice' AND split = 'val' GROUP BY ALL) v "
            "ON v.run_id = s.run_id AND v.outer_fold = s.outer_fold ORDER BY 1"
        ).fetchall()
        best = con.execute(
            "SELECT outer_fold, max(f1) FROM (SELECT run_id, outer_fold, avg(f1) AS f1 "
            "FROM metrics WHERE model = 'fold' AND scope = 'slice' AND split = 'val' "
            "GROUP BY ALL) GROUP BY 1 ORDER BY 1"
        ).fetchall()
        pooled = con.execute(
            "SELECT scope, n FROM grid_selection_metrics ORDER BY scope"
        ).fetchall()
    finally:
        con.close()
    assert [o for o, *_ in picked] == [0, 1]
    assert [(o, round(f, 9)) for o, _, f, _ in picked] == [(o, round(f, 9)) for o, f in best]
    patients = 9  # the tiny dataset: every patient tested once, by one outer fold's pick
    assert dict(pooled)["patient"] == patients
