"""Nested cross-validation end to end: `ichbench run --outer K` tests every patient once,
stores each outer fold's vote and the pooled result, resumes, and refuses what cannot be
split."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from cli_run import TINY_ARGS, error_lines, interrupted_trial, run_main

from ichbench.errors import ExitCode

OUTER = 3


def rows(db: Path, sql: str, *params) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def nested(tmp_path_factory) -> tuple[Path, str]:
    """A finished run of the tiny dataset (9 patients) with 3 outer folds of 2 folds."""
    from ichbench.cli.app import main

    db = tmp_path_factory.mktemp("nested") / "runs.duckdb"
    try:
        main(["run", *TINY_ARGS, "--outer", str(OUTER), "--db", str(db)])
    except SystemExit as exc:
        assert exc.code in (0, None)
    ((run_id,),) = rows(db, "SELECT run_id FROM runs")
    return db, run_id


def test_every_patient_is_tested_exactly_once_by_models_that_never_saw_it(nested):
    db, run_id = nested
    patients = rows(db, "SELECT DISTINCT patient_id FROM splits WHERE run_id = ?", run_id)
    tested = rows(
        db,
        "SELECT patient_id, count(DISTINCT outer_fold) FROM predictions "
        "WHERE run_id = ? AND fold IS NULL AND outer_fold IS NOT NULL GROUP BY 1",
        run_id,
    )
    assert len(tested) == len(patients) == 9 and {n for _, n in tested} == {1}
    pooled = rows(
        db,
        "SELECT count(*), count(DISTINCT (patient_id, slice)), count(DISTINCT patient_id) "
        "FROM predictions WHERE run_id = ? AND fold IS NULL AND outer_fold IS NULL",
        run_id,
    )
    ((slices, distinct, pooled_patients),) = pooled
    assert slices == distinct and pooled_patients == 9
    # a fold model of outer fold k never trained or validated on k's test patients
    leaks = rows(
        db,
        "SELECT count(*) FROM splits t JOIN splits d ON t.run_id = d.run_id "
        "AND t.outer_fold = d.outer_fold AND t.patient_id = d.patient_id "
        "WHERE t.run_id = ? AND t.role = 'test' AND d.role IN ('train', 'val')",
        run_id,
    )
    assert leaks == [(0,)]
    assert rows(
        db, "SELECT count(*) FROM folds WHERE run_id = ? AND status = 'finished'", run_id
    ) == [(OUTER * 2,)]


def test_each_outer_vote_and_the_pooled_result_are_stored(nested):
    db, run_id = nested
    per_outer = rows(
        db,
        "SELECT outer_fold, scope, threshold, n FROM metrics WHERE run_id = ? "
        "AND model = 'vote' AND split = 'test' AND outer_fold IS NOT NULL "
        "ORDER BY outer_fold, scope",
        run_id,
    )
    assert [(o, s) for o, s, _, _ in per_outer] == [
        (o, s) for o in range(OUTER) for s in ("patient", "slice")
    ]
    assert all(0.0 <= t <= 1.0 for _, _, t, _ in per_outer)
    ((threshold, n, f1_lo, f1_hi, ci),) = rows(
        db,
        "SELECT threshold, n, f1_lo, f1_hi, ci_method FROM metrics WHERE run_id = ? "
        "AND model = 'vote' AND split = 'test' AND scope = 'patient' AND outer_fold IS NULL",
        run_id,
    )
    assert threshold is None and n == 9 and ci
    assert n == sum(m for _, s, _, m in per_outer if s == "patient")
    ((slice_n,),) = rows(
        db,
        "SELECT n FROM metrics WHERE run_id = ? AND model = 'vote' AND split = 'test' "
        "AND scope = 'slice' AND outer_fold IS NULL",
        run_id,
    )
    assert slice_n == sum(m for _, s, _, m in per_outer if s == "slice")
    summary = rows(
        db,
        "SELECT outer_folds, threshold, folds_finished FROM run_summary WHERE run_id = ?",
        run_id,
    )
    assert summary == [(OUTER, None, OUTER * 2)]


def test_show_and_runs_lead_with_the_pooled_result(nested, capsys):
    db, run_id = nested
    code, out, err = run_main(capsys, "show", run_id, "--json", "--db", str(db))
    assert code == 0, err
    shown = json.loads(out)
    headline = [m for m in shown["metrics"] if m["model"] == "vote"]
    assert {m["outer_fold"] for m in headline} == {None}
    assert {m["outer_fold"] for m in shown["outer_votes"]} == set(range(OUTER))
    code, out, err = run_main(capsys, "show", run_id, "--db", str(db))
    assert code == 0, err
    assert "pooled" in out and "outer fold 2" in out and "mean ± sd" in out
    assert "Not like for like" in out  # tinycnn on phantoms beside ResNet50s on real scans
    # the validation side has every outer fold's fits, named outer.fold
    block = out[out.index("Validation (how each fold was chosen)") :]
    block = block[: block.index("\n\n")]
    fits = [line.split()[1] for line in block.splitlines() if line.startswith("fold ")]
    assert fits == [f"{o}.{f}" for o in range(OUTER) for f in range(2)]


def test_a_nested_run_interrupted_in_its_second_outer_fold_resumes(tmp_path, capsys, monkeypatch):
    from ichbench.protocol import RunProtocol

    db = tmp_path / "runs.duckdb"
    monkeypatch.setattr(RunProtocol, "fold_trial", interrupted_trial((1, 1)))
    code, _, err = run_main(capsys, "run", *TINY_ARGS, "--outer", str(OUTER), "--db", str(db))
    monkeypatch.undo()
    assert code == ExitCode.INTERRUPTED, err
    ((run_id, status),) = rows(db, "SELECT run_id, status FROM runs")
    assert status == "interrupted"
    kept = rows(db, "SELECT outer_fold, fold FROM folds ORDER BY 1, 2")
    assert kept == [(0, 0), (0, 1), (1, 0)]
    code, _, err = run_main(capsys, "run", "--resume", run_id, "--db", str(db))
    assert code == 0, err
    assert "(3 outer folds)" in err
    for kept_fold in ("outer 0 fold 0", "outer 0 fold 1", "outer 1 fold 0"):
        assert f"{kept_fold}: already finished, kept" in err
    assert rows(db, "SELECT status FROM runs") == [("finished",)]
    assert rows(db, "SELECT count(*) FROM folds") == [(OUTER * 2,)]
    assert rows(db, "SELECT count(DISTINCT patient_id) FROM predictions WHERE outer_fold IS NULL")[
        0
    ] == (9,)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--outer", "0"], "Error: --outer 0: must be at least 1"),
        (["--outer", "-2"], "Error: --outer -2: must be at least 1"),
        (["--outer", "5"], "Error: --outer 5: the dataset has 4 ICH and 5 healthy patients"),
        (["--outer", "3", "--folds", "3"], "Error: --outer 3 with --folds 3"),
        (["--outer", "3", "--test-size", "0.3"], "Error: --test-size 0.3 with --outer 3"),
    ],
)
def test_impossible_outer_folds_are_one_error_and_write_nothing(tmp_path, capsys, extra, message):
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(capsys, "run", *TINY_ARGS, *extra, "--db", str(db))
    assert code == ExitCode.USAGE, err
    assert len(error_lines(err)) == 1 and error_lines(err)[0].startswith(message), err
    assert not db.exists() and not Path(str(db) + ".runs").exists()


def test_a_grid_takes_outer_folds_too(tmp_path, capsys):
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(
        capsys, "grid", *TINY_ARGS, "--outer", "2", "--strategy", "none", "--db", str(db)
    )
    assert code == 0, err
    assert rows(db, "SELECT outer_folds, folds_finished FROM run_summary") == [(2, 4)]


def test_two_nested_runs_on_the_same_outer_folds_are_compared_paired(nested, capsys, tmp_path):
    import shutil

    db, a = nested
    own = tmp_path / "runs.duckdb"
    shutil.copy(db, own)
    code, _, err = run_main(
        capsys, "run", *TINY_ARGS, "--outer", str(OUTER), "--weight", "ich:4", "--db", str(own)
    )
    assert code == 0, err
    ((b,),) = rows(own, "SELECT run_id FROM runs WHERE run_id <> ?", a)
    code, out, err = run_main(capsys, "compare", a, b, "--json", "--db", str(own))
    assert code == 0, err
    paired = json.loads(out)["paired"]
    assert paired["note"] is None and paired["patients"] == 9
    pooled = {
        (scope, name): value
        for scope, name, value in rows(
            own,
            "SELECT scope, 'f1', f1 FROM metrics WHERE run_id = ? AND model = 'vote' "
            "AND split = 'test' AND outer_fold IS NULL",
            b,
        )
    }
    by_row = {(r["scope"], r["name"]): r for r in paired["rows"]}
    for key, value in pooled.items():
        if value is not None:
            assert by_row[key]["b"] == pytest.approx(value)


def test_the_report_of_a_nested_run_draws_every_figure(nested, capsys, tmp_path):
    db, run_id = nested
    out = tmp_path / "report"
    code, _, err = run_main(
        capsys, "report", run_id, "--db", str(db), "--out", str(out), "--no-cam", "--no-tsne"
    )
    assert code == 0, err
    page = (out / "report.html").read_text()
    for section in ("fig-threshold", "fig-confusion", "fig-roc", "fig-calibration", "fig-strip"):
        start = page.index(f'<section id="{section}">')
        assert "<img" in page[start : page.index("</section>", start)], section
    assert "pooled" in page.lower() and "No vote on the test set" not in page
    from ichbench.store import Store
    from ichbench.views import load_run_data

    data = load_run_data(Store(db, create=False), run_id, results=False)
    # Grad-CAM and t-SNE show outer fold 0's models: only on the patients they never saw
    assert data.shown_test_patients == data.outer_tests[0] != data.test_patients


def test_repeats_run_the_whole_again_with_the_next_seeds(tmp_path, capsys):
    db = tmp_path / "runs.duckdb"
    code, out, err = run_main(capsys, "run", *TINY_ARGS, "--repeats", "2", "--db", str(db))
    assert code == 0, err
    runs = rows(db, "SELECT seed, grid_id, status FROM runs ORDER BY seed")
    assert [(s, st) for s, _, st in runs] == [(0, "finished"), (1, "finished")]
    assert len({g for _, g, _ in runs}) == 1 and runs[0][1].startswith("repeats-")
    assert "2 repeats" in out and "mean ± sd" in out
    splits = rows(
        db,
        "SELECT r.seed, s.patient_id FROM splits s JOIN runs r USING (run_id) "
        "WHERE s.role = 'test' ORDER BY 1, 2",
    )
    by_seed = {seed: [p for s, p in splits if s == seed] for seed in (0, 1)}
    assert by_seed[0] != by_seed[1]  # each repeat splits the patients its own way


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--repeats", "0"], "Error: --repeats 0: must be at least 1"),
        (["--repeats", "3", "--seed", "4294967294"], "Error: --repeats 3 from --seed 4294967294"),
    ],
)
def test_impossible_repeats_are_one_error_and_write_nothing(tmp_path, capsys, extra, message):
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(capsys, "run", *TINY_ARGS, *extra, "--db", str(db))
    assert code == ExitCode.USAGE, err
    assert len(error_lines(err)) == 1 and error_lines(err)[0].startswith(message), err
    assert not db.exists()
