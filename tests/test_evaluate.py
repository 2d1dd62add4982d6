"""`ichbench evaluate RUN --data OTHER` on a tiny real run: the run's vote applied unchanged
to another dataset (and shown to be the vote: on the run's own test patients it gives the
stored test predictions), recorded whole as an evaluation of that run, listed by `show`,
queryable in SQL, drawn in the report; and every refusal is one line, an exit code and
nothing written."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pytest

from ichbench.checkpoints import load_run_dataset
from ichbench.config import RunConfig
from ichbench.errors import DataError, StoreError
from ichbench.evaluation import load_run_model, score_dataset
from ichbench.lifecycle import run_config
from ichbench.paths import run_dir
from ichbench.store import Store
from tests.cli_run import error_lines, run_main

TINY = dict(
    data="synthetic:8,0,32",
    backbone="tinycnn",
    folds=2,
    epochs=1,
    image_size=32,
    batch_size=16,
    preset="quick",
    device="cpu",
)
OTHER = "synthetic:6,1,32"
EVALUATION_TABLES = (
    "evaluations",
    "evaluation_metrics",
    "evaluation_predictions",
    "evaluation_patients",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 2-fold run of the tiny CNN on 8 synthetic patients, in its own store."""
    root = tmp_path_factory.mktemp("evaluate-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_LOAD_PLUGINS", "")
        mp.setenv("HF_HUB_OFFLINE", "1")
        store = Store(root / "runs.duckdb")
        result = run_config(RunConfig(**TINY), store, cache_dir=root / "cache")
    return root, store, result.run_id


@pytest.fixture
def env(tiny_run, monkeypatch):
    root, store, run_id = tiny_run
    monkeypatch.setenv("ICHBENCH_CACHE", str(root / "cache"))
    return root, store, run_id


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    """The run evaluated on a second synthetic dataset through the CLI, in a copy of its
    store (so the tests that count evaluations elsewhere are not affected)."""
    root, store, run_id = tiny_run
    db = _copy_store(store.path, run_id, tmp_path_factory.mktemp("evaluated"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_CACHE", str(root / "cache"))
        mp.setenv("ICHBENCH_LOAD_PLUGINS", "")
        from ichbench.cli.app import main

        try:
            main(
                ["evaluate", run_id, "--data", OTHER, "--exclude", "50", "--db", str(db), "--json"]
            )
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
    return db, run_id, code


def _copy_store(db: Path, run_id: str, into: Path) -> Path:
    """The store file and the run's folder (checkpoints) copied, so a test may break them."""
    copy = into / "runs.duckdb"
    shutil.copy2(db, copy)
    shutil.copytree(run_dir(db, run_id), run_dir(copy, run_id))
    return copy


def _count(db: Path, table: str) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_evaluate_records_the_run_on_another_dataset(evaluated, capsys) -> None:
    db, run_id, code = evaluated
    assert code in (0, None)
    store = Store(db, create=False)
    (ev,) = store.evaluations(run_id)
    assert ev["dataset"] == OTHER and ev["slice_labels"] is True
    assert ev["patients"] == 5  # 049-054 but 050, left out by --exclude
    assert ev["ichbench_version"] and ev["dataset_hash"]
    assert ev["dataset_hash"] != store.get_run(run_id)["dataset_hash"]
    assert ev["preprocessing"]["windows"] == ["brain"] and ev["preprocessing"]["image_size"] == 32
    assert ev["preprocessing"]["exclude"] == [50]
    assert set(ev["metrics"]) == {"slice", "patient"}
    for scope, row in ev["metrics"].items():
        assert row["f1_lo"] is not None and row["f1_lo"] <= row["f1"] <= row["f1_hi"], scope
        assert row["threshold"] == pytest.approx(ev["threshold"])
    assert ev["metrics"]["slice"]["n"] == ev["slices"]
    assert ev["metrics"]["patient"]["n"] == 5
    assert ev["threshold"] == pytest.approx(store.get_run(run_id)["threshold"])
    # every slice and every patient, keyed by the evaluation, queryable in SQL
    _, rows = store.query(
        "SELECT count(*), count(DISTINCT patient_id), bool_and(label IN (0, 1)) "
        f"FROM evaluation_predictions WHERE evaluation_id = '{ev['evaluation_id']}'"
    )
    assert rows == [(ev["slices"], 5, True)]
    _, rows = store.query("SELECT count(*) FROM evaluation_predictions WHERE patient_id = 50")
    assert rows == [(0,)]
    _, rows = store.query(
        "SELECT count(*), sum(decision::INT) FROM evaluation_patients "
        f"WHERE evaluation_id = '{ev['evaluation_id']}'"
    )
    m = ev["metrics"]["patient"]
    assert rows == [(5, m["tp"] + m["fp"])]


def test_patient_decisions_follow_the_slice_decisions_under_any(evaluated) -> None:
    """The paper's rule: a patient is ICH when any of its slices is flagged."""
    db, run_id, _ = evaluated
    _, rows = Store(db, create=False).query(
        "SELECT p.patient_id, p.decision, bool_or(s.decision), max(s.prob), p.score "
        "FROM evaluation_patients p JOIN evaluation_predictions s "
        "USING (evaluation_id, patient_id) GROUP BY ALL"
    )
    assert rows
    for _, decided, any_slice, top, score in rows:
        assert decided == any_slice
        assert score == pytest.approx(top)


def test_show_with_evaluations_reads_at_80_columns(evaluated, capsys, monkeypatch) -> None:
    """Every evaluation's row whole in an 80-column terminal: nothing cut, no line wider."""
    from rich.cells import cell_len

    from ichbench.cli import common

    db, run_id, _ = evaluated
    monkeypatch.setattr(common.out, "width", 80)  # the data console's width, as a terminal's
    code, out, _ = run_main(capsys, "show", run_id, "--db", str(db))
    assert code == 0 and "Evaluations on other datasets" in out
    assert "…" not in out
    wide = [line for line in out.splitlines() if cell_len(line) > 80]
    assert wide == []


def test_show_lists_evaluations_beside_the_internal_test(evaluated, capsys, monkeypatch) -> None:
    db, run_id, _ = evaluated
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run_main(capsys, "show", run_id, "--db", str(db))
    assert code == 0
    assert "Evaluations on other datasets" in out
    assert "(own test set)" in out
    assert OTHER in out
    code, out, _ = run_main(capsys, "show", run_id, "--db", str(db), "--json")
    assert code == 0
    shown = json.loads(out)["evaluations"]
    assert [e["dataset"] for e in shown] == [OTHER]


@pytest.mark.slow
def test_the_report_draws_the_evaluations(evaluated, tiny_run, tmp_path, monkeypatch) -> None:
    from ichbench.report.build import ReportOptions, build_report

    db, run_id, _ = evaluated
    monkeypatch.setenv("ICHBENCH_CACHE", str(tiny_run[0] / "cache"))
    result = build_report(
        [run_id], db=db, out=tmp_path / "r", options=ReportOptions(cam=False, tsne=False)
    )
    assert result.sections[-2:] == ["table-evaluations", "fig-evaluations"]
    page = result.html.read_text(encoding="utf-8")
    assert "External validation" in page and OTHER in page
    assert (tmp_path / "r" / "fig-evaluations.png").stat().st_size > 1000


def test_a_run_without_evaluations_has_no_such_section(env) -> None:
    from ichbench.report.evaluation_section import evaluation_sections
    from ichbench.views import load_run_data

    _, store, run_id = env
    assert evaluation_sections(store.path, load_run_data(store, run_id)) == []


def test_the_vote_applied_is_the_runs_vote(env) -> None:
    """On the run's own held-out test patients, the run applied from its checkpoints and
    stored rules gives exactly the stored vote: scores, decisions and patient decisions."""
    _, store, run_id = env
    model = load_run_model(store, run_id)
    run = store.get_run(run_id)
    dataset = load_run_dataset(run["config"])
    test = store.split(run_id).test
    rows = np.flatnonzero(np.isin(dataset.patient_ids, test))
    probs = model.fold_probabilities(dataset.images[rows], dataset.patient_ids[rows])
    scores, decisions = model.vote(probs)
    stored = store.vote_slices(run_id)
    order = {
        (int(p), int(s)): i
        for i, (p, s) in enumerate(zip(stored["patient_id"], stored["slice"], strict=True))
    }
    at = [
        order[(int(p), int(s))]
        for p, s in zip(dataset.patient_ids[rows], dataset.slice_numbers[rows])
    ]
    np.testing.assert_allclose(scores, np.asarray(stored["prob"])[at], atol=1e-5)
    assert (decisions == np.asarray(stored["decision"], dtype=bool)[at]).all()


def test_evaluating_the_runs_own_dataset_is_refused(env, capsys) -> None:
    _, store, run_id = env
    before = _count(store.path, "evaluations")
    code, _, err = run_main(
        capsys, "evaluate", run_id, "--data", TINY["data"], "--db", str(store.path)
    )
    assert code == 2
    (line,) = error_lines(err)
    assert "own dataset" in line and run_id in line
    assert _count(store.path, "evaluations") == before


def test_an_unfinished_run_is_refused(tiny_run, tmp_path, capsys) -> None:
    _, store, run_id = tiny_run
    db = _copy_store(store.path, run_id, tmp_path)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ?", [run_id])
    code, _, err = run_main(capsys, "evaluate", run_id, "--data", OTHER, "--db", str(db))
    assert code == 2
    (line,) = error_lines(err)
    assert "interrupted" in line and "finished" in line
    assert _count(db, "evaluations") == 0


def test_missing_checkpoints_are_named(tiny_run, tmp_path, capsys) -> None:
    _, store, run_id = tiny_run
    db = _copy_store(store.path, run_id, tmp_path)
    gone = run_dir(db, run_id) / "fold1.pt"
    gone.unlink()
    code, _, err = run_main(capsys, "evaluate", run_id, "--data", OTHER, "--db", str(db))
    assert code == 3
    (line,) = error_lines(err)
    assert str(gone) in line and "fold 1" in line
    assert _count(db, "evaluations") == 0


def test_a_preprocessing_mismatch_names_both_sides(env, synth_factory, tmp_path) -> None:
    from ichbench.data.physionet import PhysioNetSource
    from ichbench.interfaces import LoadOptions

    _, store, run_id = env
    model = load_run_model(store, run_id)
    folder = synth_factory(3, 7, 32)
    other = PhysioNetSource(folder).load(
        LoadOptions(image_size=40, windows=("brain", "subdural"), exclude=()), tmp_path
    )
    with pytest.raises(DataError) as info:
        model.check_input("that folder", other.windows, other.images.shape[-1], 2)
    text = str(info.value)
    assert "window brain at 32 px (1 input channel)" in text
    assert "that folder gives windows brain,subdural at 40 px (2 input channels)" in text


def test_the_jpg_release_cannot_give_a_window_it_lacks(env, jpg_sample_dir) -> None:
    from ichbench.evaluation import open_other

    _, store, run_id = env
    model = load_run_model(store, run_id)
    model.models = [replace(m, windows=("brain", "subdural"), in_chans=2) for m in model.models]
    with pytest.raises(DataError, match="offers only windows brain,bone"):
        open_other(model, str(jpg_sample_dir))


def test_unknown_dataset_and_unknown_run(env, capsys) -> None:
    _, store, run_id = env
    code, _, err = run_main(
        capsys, "evaluate", run_id, "--data", "/no/such/folder", "--db", str(store.path)
    )
    assert code == 3 and len(error_lines(err)) == 1
    code, _, err = run_main(
        capsys, "evaluate", "nosuchrun", "--data", OTHER, "--db", str(store.path)
    )
    assert code == 5 and "Unknown run" in error_lines(err)[0]


def test_patient_level_only_data_gets_patient_metrics_only(env, tmp_path) -> None:
    """A dataset labelled per patient (CQ500's reads): its slices have no label, so only
    patient-level figures are computed, from the patients' own labels."""
    from ichbench.data.physionet import PhysioNetSource
    from ichbench.interfaces import LoadOptions

    _, store, run_id = env
    model = load_run_model(store, run_id)
    loaded = PhysioNetSource(_folder(env)).load(LoadOptions(image_size=32, exclude=()), tmp_path)
    truth = {int(p): 1 - label for p, label in loaded.patient_labels().items()}  # not the slices'
    patient_only = replace(
        loaded, labels=np.full(len(loaded), -1, dtype=np.int64), patient_truth=truth
    )
    record = score_dataset(model, patient_only, "patient-only")
    assert record.slice_labels is False
    assert [m.scope for m in record.metrics] == ["patient"]
    assert record.patient_label.tolist() == [truth[int(p)] for p in record.patient_ids]
    copy = _copy_store(store.path, run_id, tmp_path)
    Store(copy).write_evaluation(record)
    _, rows = Store(copy, create=False).query(
        "SELECT count(*), count(label) FROM evaluation_predictions"
    )
    assert rows == [(len(loaded), 0)]


def _folder(env) -> Path:
    """The folder the tiny run's synthetic dataset was generated into (in its cache)."""
    root = env[0]
    return next((root / "cache" / "synthetic").glob("p8-s0-px32"))


def test_a_failed_write_leaves_nothing(env, tmp_path) -> None:
    """The evaluation is one transaction: a row that breaks a constraint half way through
    (after the evaluation's own row went in) leaves no trace of it."""
    _, store, run_id = env
    model = load_run_model(store, run_id)
    dataset_copy = _copy_store(store.path, run_id, tmp_path)
    dataset = load_run_dataset(model.run["config"])
    record = score_dataset(model, dataset, "x")
    record.label = np.full_like(record.label, 2)  # no slice label is 2
    target = Store(dataset_copy)
    with pytest.raises(StoreError):
        target.write_evaluation(record)
    for table in EVALUATION_TABLES:
        assert _count(dataset_copy, table) == 0, table


def test_removing_a_run_removes_its_evaluations(evaluated, tmp_path, capsys) -> None:
    db, run_id, _ = evaluated
    copy = _copy_store(db, run_id, tmp_path)
    assert _count(copy, "evaluation_predictions") > 0
    code, _, _ = run_main(capsys, "rm", run_id, "--yes", "--db", str(copy))
    assert code == 0
    for table in (
        "evaluations",
        "evaluation_metrics",
        "evaluation_predictions",
        "evaluation_patients",
    ):
        assert _count(copy, table) == 0, table


def test_a_learned_rule_decides_from_its_stored_fit() -> None:
    """The learned patient rule rebuilt from the numbers a run stores decides as the
    fitted scikit-learn model did, patient by patient."""
    from ichbench.evaluation import _stored_rule
    from ichbench.patient_features import PatientSlices
    from ichbench.plugins import get_registry

    rng = np.random.default_rng(0)
    patients = []
    for label in (0, 1) * 6:
        scores = rng.uniform(0, 0.6 if label == 0 else 1.0, size=int(rng.integers(8, 20)))
        patients.append(PatientSlices(scores=scores, decisions=scores >= 0.5, label=label))
    rule = get_registry().create("patient", "learned:3")
    fitted = rule.fit(patients, 0.5)
    assert fitted.model is not None
    stored = json.loads(json.dumps({"kind": "patient-rule", "fold": None, "params": fitted.fitted}))
    rebuilt = _stored_rule("r", rule, [stored])
    for p in patients:
        want = fitted.decide(p.scores, p.decisions, 0.5)
        got = rebuilt.decide(p.scores, p.decisions, 0.5)
        assert got[1] == want[1]
        assert got[0] == pytest.approx(want[0], abs=1e-9)


def test_a_learned_rule_without_its_fit_is_refused() -> None:
    from ichbench.evaluation import _stored_rule
    from ichbench.plugins import get_registry

    rule = get_registry().create("patient", "learned")
    with pytest.raises(DataError, match="not recorded"):
        _stored_rule("r", rule, [])


@pytest.mark.slow
def test_calibrated_ensemble_and_learned_rule_are_applied_as_stored(tmp_path, monkeypatch) -> None:
    """A run whose vote calibrates each fold and learns its patient rule, whose models see
    a neighbouring slice on each side and average flipped images: applied from the store
    to its own test patients, it gives the stored vote, slice and patient."""
    monkeypatch.setenv("ICHBENCH_CACHE", str(tmp_path / "cache"))
    store = Store(tmp_path / "runs.duckdb")
    cfg = RunConfig(
        **{**TINY, "data": "synthetic:14,2,32"},
        ensemble="calibrated-mean:temperature",
        patient_rule="learned:2",
        context=1,
        tta="flip",
    )
    run_id = run_config(cfg, store, cache_dir=tmp_path / "cache").run_id
    model = load_run_model(store, run_id)
    assert model.calibrators is not None and len(model.calibrators) == 2
    assert model.patient_rule.model is not None, "fitted on too few patients to test"
    assert model.context == 1 and model.in_chans == 3 and model.tta == "flip"
    dataset = load_run_dataset(store.get_run(run_id)["config"])
    rows = np.flatnonzero(np.isin(dataset.patient_ids, store.split(run_id).test))
    probs = model.fold_probabilities(dataset.images[rows], dataset.patient_ids[rows])
    scores, decisions = model.vote(probs)
    stored = store.vote_slices(run_id)
    np.testing.assert_allclose(scores, stored["prob"], atol=1e-5)  # both by patient, slice
    assert (decisions == stored["decision"].astype(bool)).all()
    patients, _, p_scores, p_decisions = model.decide_patients(
        dataset.patient_ids[rows],
        dataset.slice_numbers[rows],
        dataset.labels[rows],
        scores,
        decisions,
    )
    vote = store.vote_patients(run_id)
    test = vote.split == "test"
    assert patients.tolist() == vote.patient_id[test].tolist()
    np.testing.assert_allclose(p_scores, vote.score[test], atol=1e-5)
    assert p_decisions.tolist() == vote.decision[test].tolist()


def test_the_runs_patients_under_another_name_are_refused(env, tmp_path, capsys) -> None:
    """A copy of the run's data with one edit to its label file has another hash, but
    its patients are the run's: those it trained or validated on are refused by name,
    and once they are left out its test patients, which no model saw, may be evaluated."""
    _, store, run_id = env
    copy = tmp_path / "relabelled"
    shutil.copytree(_folder(env), copy)
    csv = copy / "hemorrhage_diagnosis_raw_ct.csv"
    lines = csv.read_text(encoding="utf-8-sig").splitlines()
    lines[1] = lines[1][:-1] + ("1" if lines[1].endswith("0") else "0")  # a fracture flag
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    db = _copy_store(store.path, run_id, tmp_path)
    code, _, err = run_main(capsys, "evaluate", run_id, "--data", str(copy), "--db", str(db))
    assert code == 2, err
    (line,) = error_lines(err)
    assert "trained or validated on" in line
    split = store.split(run_id)
    seen = sorted({p for parts in split.folds.values() for p in parts["train"] + parts["val"]})
    assert f"patient(s) {seen[0]} (the run's patient {seen[0]})" in line
    assert _count(db, "evaluations") == 0
    left_out = ",".join(map(str, seen))
    code, _, err = run_main(
        capsys, "evaluate", run_id, "--data", str(copy), "--exclude", left_out, "--db", str(db)
    )
    assert code == 0, err
    (ev,) = Store(db, create=False).evaluations(run_id)
    assert ev["patients"] == len(split.test)


def test_an_external_dataset_larger_than_the_budget_is_streamed_alike(
    evaluated, capsys, tmp_path
) -> None:
    """`evaluate --device-memory` below the other dataset's size streams its images from
    the cache: the same scores and metrics as on the device."""
    import duckdb

    db, run_id, _ = evaluated
    code, out, err = run_main(
        capsys, "evaluate", run_id, "--data", OTHER, "--db", str(db), "--json"
    )
    assert code == 0, err
    resident = json.loads(out)
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(Path(db).read_bytes())
    with duckdb.connect(str(copy)) as con:  # forget the evaluations, keep the run
        for table in ("evaluation_patients", "evaluation_predictions", "evaluation_metrics"):
            con.execute(f"DELETE FROM {table}")
        con.execute("DELETE FROM evaluations")
    runs_folder = Path(f"{db}.runs")
    (tmp_path / "copy.duckdb.runs").symlink_to(runs_folder)
    code, out, err = run_main(
        capsys,
        "evaluate",
        run_id,
        "--data",
        OTHER,
        "--db",
        str(copy),
        "--json",
        "--device-memory",
        "0.000001",
    )
    assert code == 0, err
    assert "images streamed to cpu batch by batch" in err
    streamed = json.loads(out)

    def without_ids(metrics: dict) -> dict:
        return {k: {n: v for n, v in m.items() if n != "evaluation_id"} for k, m in metrics.items()}

    assert without_ids(streamed["metrics"]) == without_ids(resident["metrics"])

    def probs(path: Path, evaluation_id: str) -> list:
        with duckdb.connect(str(path), read_only=True) as con:
            return con.execute(
                "SELECT patient_id, slice, prob FROM evaluation_predictions "
                "WHERE evaluation_id = ? ORDER BY patient_id, slice",
                [evaluation_id],
            ).fetchall()

    assert probs(copy, streamed["evaluation_id"]) == probs(db, resident["evaluation_id"])
    code, _, err = run_main(
        capsys, "evaluate", run_id, "--data", OTHER, "--db", str(db), "--device-memory", "0"
    )
    assert code == 2 and "--device-memory 0" in err
