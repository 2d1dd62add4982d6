"""The DuckDB run store: schema, migrations, round trips, atomicity, read-only SQL,
concurrency. Records are built by hand so these tests never depend on training."""

from __future__ import annotations

import hashlib
import multiprocessing
import shutil
import threading
from pathlib import Path

import duckdb
import numpy as np
import pytest

from ichbench.errors import RunFinishedError, StoreError
from ichbench.records import (
    METRIC_NAMES,
    EpochRecord,
    FoldRecord,
    MetricRow,
    PatientDecisions,
    Predictions,
    RunRecord,
    VoteRecord,
)
from ichbench.store import Store, migrations, writes
from ichbench.store.baselines import HOSEYNI_CITATION, SEED_V1

# ------------------------------------------------------------------ record builders

TEST_PATIENTS = [1, 2, 3]
FOLD_PATIENTS = {
    0: {"train": [10, 11, 12], "val": [13, 14]},
    1: {"train": [12, 13, 14], "val": [10, 11]},
}


def make_run(
    run_id: str,
    *,
    backbone: str = "resnet50",
    grid_id: str | None = None,
    strategies: tuple[str, ...] = ("augment:3.3", "weight:ich:4"),
    config_hash: str = "cfg-1",
    dataset_hash: str = "data-1",
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        dataset="synthetic",
        dataset_hash=dataset_hash,
        config={
            "backbone": backbone,
            "ensemble": "mean",
            "patient_rule": "any",
            "epochs": 2,
            "cache": Path("/tmp/x"),
        },
        config_hash=config_hash,
        backbone=backbone,
        strategies=list(strategies),
        seed=7,
        preset="cpu",
        device="cpu",
        pretrained=False,
        pretrained_source=None,
        versions={"torch": "2.4", "ichbench": "0.1.0"},
        git_sha="abc123",
        test_patients=list(TEST_PATIENTS),
        folds={k: dict(v) for k, v in FOLD_PATIENTS.items()},
        split_hash="split-1",
        grid_id=grid_id,
    )


def make_predictions(n_val: int, n_test: int, seed: int) -> Predictions:
    rng = np.random.default_rng(seed)
    n = n_val + n_test
    return Predictions(
        split=np.array(["val"] * n_val + ["test"] * n_test),
        patient_id=np.repeat(np.arange(n // 10 + 1), 10)[:n].astype(np.int64),
        slice=(np.arange(n) % 10 + 1).astype(np.int64),
        label=rng.integers(0, 2, n).astype(np.int64),
        prob=rng.random(n),
    )


def make_metric(
    model: str,
    fold: int | None,
    scope: str,
    split: str,
    f1: float,
    *,
    precision: float | None = 0.5,
) -> MetricRow:
    ci = {name: (round(f1 - 0.1, 2), round(f1 + 0.1, 2)) for name in METRIC_NAMES}
    return MetricRow(
        model=model,
        fold=fold,
        scope=scope,
        split=split,
        threshold=0.4,
        sensitivity=0.9,
        specificity=0.8,
        precision=precision,
        f1=f1,
        accuracy=0.85,
        auc=float("nan"),
        tp=9,
        fp=3,
        tn=40,
        fn=1,
        n=53,
        ci=ci,
        ci_method="wilson",
    )


def fold_metrics(model: str, fold: int | None, f1: float) -> list[MetricRow]:
    return [
        make_metric(model, fold, scope, split, f1 if split == "test" else f1 + 0.05)
        for scope in ("slice", "patient")
        for split in ("val", "test")
    ]


def make_fold(
    fold: int, *, n_val: int = 40, n_test: int = 60, f1: float = 0.6, seed: int = 0
) -> FoldRecord:
    curve = np.linspace(0.2, 0.7, 101)
    curve[-1] = np.nan
    return FoldRecord(
        fold=fold,
        threshold=0.37,
        best_epoch=2,
        train_ich_before=30,
        train_healthy_before=200,
        train_ich=99,
        train_healthy=200,
        added=69,
        removed=0,
        train_patients=FOLD_PATIENTS[fold]["train"],
        val_patients=FOLD_PATIENTS[fold]["val"],
        wall_s=12.5,
        curve=curve,
        metrics=fold_metrics("fold", fold, f1),
        predictions=make_predictions(n_val, n_test, seed + fold),
        epochs=[EpochRecord(e, 0.5 / (e + 1), 0.6 / (e + 1), 0.5 + e / 10, 3.0) for e in range(3)],
        checkpoint=f"fold{fold}.pt",
    )


def make_vote(f1: float = 0.7, n_test: int = 60) -> VoteRecord:
    return VoteRecord(
        threshold=0.42,
        mean_curve=np.linspace(0.1, 0.6, 101),
        metrics=[make_metric("vote", None, scope, "test", f1) for scope in ("slice", "patient")],
        predictions=make_predictions(0, n_test, 99),
    )


def fill(
    store: Store,
    run_id: str,
    *,
    finish: bool = True,
    f1: float = 0.7,
    n_test: int = 60,
    **run_kwargs: object,
) -> None:
    store.create_run(make_run(run_id, **run_kwargs))
    for fold in FOLD_PATIENTS:
        store.write_fold(run_id, make_fold(fold, n_test=n_test))
    if finish:
        store.finish_run(run_id, make_vote(f1, n_test=n_test), wall_s=30.0)


def count(store: Store, table: str, where: str = "TRUE") -> int:
    return store.query(f"SELECT count(*) FROM {table} WHERE {where}")[1][0][0]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "runs.duckdb", lock_timeout=10)


# ------------------------------------------------------------------ schema

EXPECTED_SCHEMA = {
    "_migrations": [
        ("name", "VARCHAR"),
        ("applied_at", "TIMESTAMP"),
    ],
    "baselines": [
        ("source", "VARCHAR"),
        ("citation", "VARCHAR"),
        ("model", "VARCHAR"),
        ("backbone", "VARCHAR"),
        ("setting", "VARCHAR"),
        ("scope", "VARCHAR"),
        ("split", "VARCHAR"),
        ("fold", "INTEGER"),
        ("sensitivity", "DOUBLE"),
        ("specificity", "DOUBLE"),
        ("precision", "DOUBLE"),
        ("f1", "DOUBLE"),
        ("accuracy", "DOUBLE"),
        ("note", "VARCHAR"),
    ],
    "curves": [
        ("run_id", "VARCHAR"),
        ("fold", "INTEGER"),
        ("threshold", "DOUBLE"),
        ("f1", "DOUBLE"),
        ("outer_fold", "INTEGER"),
    ],
    "epochs": [
        ("run_id", "VARCHAR"),
        ("fold", "INTEGER"),
        ("epoch", "INTEGER"),
        ("train_loss", "DOUBLE"),
        ("val_loss", "DOUBLE"),
        ("val_f1", "DOUBLE"),
        ("wall_s", "DOUBLE"),
        ("outer_fold", "INTEGER"),
    ],
    "grid_selection_metrics": [
        ("grid_id", "VARCHAR"),
        ("scope", "VARCHAR"),
        ("sensitivity", "DOUBLE"),
        ("specificity", "DOUBLE"),
        ("precision", "DOUBLE"),
        ("f1", "DOUBLE"),
        ("accuracy", "DOUBLE"),
        ("auc", "DOUBLE"),
        ("tp", "INTEGER"),
        ("fp", "INTEGER"),
        ("tn", "INTEGER"),
        ("fn", "INTEGER"),
        ("n", "INTEGER"),
        ("sensitivity_lo", "DOUBLE"),
        ("sensitivity_hi", "DOUBLE"),
        ("specificity_lo", "DOUBLE"),
        ("specificity_hi", "DOUBLE"),
        ("precision_lo", "DOUBLE"),
        ("precision_hi", "DOUBLE"),
        ("f1_lo", "DOUBLE"),
        ("f1_hi", "DOUBLE"),
        ("accuracy_lo", "DOUBLE"),
        ("accuracy_hi", "DOUBLE"),
        ("auc_lo", "DOUBLE"),
        ("auc_hi", "DOUBLE"),
        ("ci_method", "VARCHAR"),
        ("brier", "DOUBLE"),
        ("ece", "DOUBLE"),
        ("written_at", "TIMESTAMP"),
    ],
    "grid_selections": [
        ("grid_id", "VARCHAR"),
        ("outer_fold", "INTEGER"),
        ("run_id", "VARCHAR"),
        ("mean_val_f1", "DOUBLE"),
    ],
    "evaluation_metrics": [
        ("evaluation_id", "VARCHAR"),
        ("run_id", "VARCHAR"),
        ("scope", "VARCHAR"),
        ("threshold", "DOUBLE"),
        ("sensitivity", "DOUBLE"),
        ("specificity", "DOUBLE"),
        ("precision", "DOUBLE"),
        ("f1", "DOUBLE"),
        ("accuracy", "DOUBLE"),
        ("auc", "DOUBLE"),
        ("tp", "INTEGER"),
        ("fp", "INTEGER"),
        ("tn", "INTEGER"),
        ("fn", "INTEGER"),
        ("n", "INTEGER"),
        ("sensitivity_lo", "DOUBLE"),
        ("sensitivity_hi", "DOUBLE"),
        ("specificity_lo", "DOUBLE"),
        ("specificity_hi", "DOUBLE"),
        ("precision_lo", "DOUBLE"),
        ("precision_hi", "DOUBLE"),
        ("f1_lo", "DOUBLE"),
        ("f1_hi", "DOUBLE"),
        ("accuracy_lo", "DOUBLE"),
        ("accuracy_hi", "DOUBLE"),
        ("auc_lo", "DOUBLE"),
        ("auc_hi", "DOUBLE"),
        ("ci_method", "VARCHAR"),
        ("brier", "DOUBLE"),
        ("ece", "DOUBLE"),
    ],
    "evaluation_patients": [
        ("evaluation_id", "VARCHAR"),
        ("run_id", "VARCHAR"),
        ("patient_id", "INTEGER"),
        ("label", "INTEGER"),
        ("score", "DOUBLE"),
        ("decision", "BOOLEAN"),
    ],
    "evaluation_predictions": [
        ("evaluation_id", "VARCHAR"),
        ("run_id", "VARCHAR"),
        ("patient_id", "INTEGER"),
        ("slice", "INTEGER"),
        ("label", "INTEGER"),
        ("prob", "DOUBLE"),
        ("decision", "BOOLEAN"),
    ],
    "evaluations": [
        ("evaluation_id", "VARCHAR"),
        ("run_id", "VARCHAR"),
        ("dataset", "VARCHAR"),
        ("dataset_hash", "VARCHAR"),
        ("source", "VARCHAR"),
        ("created_at", "TIMESTAMP"),
        ("patients", "INTEGER"),
        ("slices", "INTEGER"),
        ("slice_labels", "BOOLEAN"),
        ("threshold", "DOUBLE"),
        ("preprocessing", "JSON"),
        ("device", "VARCHAR"),
        ("wall_s", "DOUBLE"),
        ("ichbench_version", "VARCHAR"),
    ],
    "folds": [
        ("run_id", "VARCHAR"),
        ("fold", "INTEGER"),
        ("status", "VARCHAR"),
        ("threshold", "DOUBLE"),
        ("best_epoch", "INTEGER"),
        ("train_ich_before", "INTEGER"),
        ("train_healthy_before", "INTEGER"),
        ("train_ich", "INTEGER"),
        ("train_healthy", "INTEGER"),
        ("added", "INTEGER"),
        ("removed", "INTEGER"),
        ("train_patients", "INTEGER[]"),
        ("val_patients", "INTEGER[]"),
        ("wall_s", "DOUBLE"),
        ("checkpoint", "VARCHAR"),
        ("written_at", "TIMESTAMP"),
        ("compiled", "BOOLEAN"),
        ("notes", "JSON"),
        ("outer_fold", "INTEGER"),
    ],
    "metrics": [
        ("run_id", "VARCHAR"),
        ("fold", "INTEGER"),
        ("model", "VARCHAR"),
        ("scope", "VARCHAR"),
        ("split", "VARCHAR"),
        ("threshold", "DOUBLE"),
        ("sensitivity", "DOUBLE"),
        ("specificity", "DOUBLE"),
        ("precision", "DOUBLE"),
        ("f1", "DOUBLE"),
        ("accuracy", "DOUBLE"),
        ("auc", "DOUBLE"),
        ("tp", "INTEGER"),
        ("fp", "INTEGER"),
        ("tn", "INTEGER"),
        ("fn", "INTEGER"),
        ("n", "INTEGER"),
        ("sensitivity_lo", "DOUBLE"),
        ("sensitivity_hi", "DOUBLE"),
        ("specificity_lo", "DOUBLE"),
        ("specificity_hi", "DOUBLE"),
        ("precision_lo", "DOUBLE"),
        ("precision_hi", "DOUBLE"),
        ("f1_lo", "DOUBLE"),
        ("f1_hi", "DOUBLE"),
        ("accuracy_lo", "DOUBLE"),
        ("accuracy_hi", "DOUBLE"),
        ("auc_lo", "DOUBLE"),
        ("auc_hi", "DOUBLE"),
        ("ci_method", "VARCHAR"),
        ("outer_fold", "INTEGER"),
        ("brier", "DOUBLE"),
        ("ece", "DOUBLE"),
    ],
    "paired_patients": [
        ("run_a", "VARCHAR"),
        ("run_b", "VARCHAR"),
        ("patient_id", "INTEGER"),
        ("label", "INTEGER"),
        ("score_a", "DOUBLE"),
        ("score_b", "DOUBLE"),
        ("decision_a", "BOOLEAN"),
        ("decision_b", "BOOLEAN"),
        ("correct_a", "BOOLEAN"),
        ("correct_b", "BOOLEAN"),
    ],
    "patient_decisions": [
        ("run_id", "VARCHAR"),
        ("fold", "INTEGER"),
        ("split", "VARCHAR"),
        ("patient_id", "INTEGER"),
        ("label", "INTEGER"),
        ("score", "DOUBLE"),
        ("decision", "BOOLEAN"),
        ("outer_fold", "INTEGER"),
    ],
    "predictions": [
        ("run_id", "VARCHAR"),
        ("fold", "INTEGER"),
        ("split", "VARCHAR"),
        ("patient_id", "INTEGER"),
        ("slice", "INTEGER"),
        ("label", "INTEGER"),
        ("prob", "DOUBLE"),
        ("outer_fold", "INTEGER"),
        ("decision", "BOOLEAN"),
    ],
    "run_summary": [
        ("run_id", "VARCHAR"),
        ("status", "VARCHAR"),
        ("started_at", "TIMESTAMP"),
        ("finished_at", "TIMESTAMP"),
        ("dataset", "VARCHAR"),
        ("backbone", "VARCHAR"),
        ("strategies", "VARCHAR[]"),
        ("ensemble", "VARCHAR"),
        ("patient_rule", "VARCHAR"),
        ("preset", "VARCHAR"),
        ("seed", "BIGINT"),
        ("device", "VARCHAR"),
        ("pretrained", "BOOLEAN"),
        ("grid_id", "VARCHAR"),
        ("config_hash", "VARCHAR"),
        ("dataset_hash", "VARCHAR"),
        ("threshold", "DOUBLE"),
        ("folds_finished", "BIGINT"),
        ("slice_sensitivity", "DOUBLE"),
        ("slice_specificity", "DOUBLE"),
        ("slice_precision", "DOUBLE"),
        ("slice_f1", "DOUBLE"),
        ("slice_accuracy", "DOUBLE"),
        ("slice_auc", "DOUBLE"),
        ("patient_sensitivity", "DOUBLE"),
        ("patient_specificity", "DOUBLE"),
        ("patient_precision", "DOUBLE"),
        ("patient_f1", "DOUBLE"),
        ("patient_accuracy", "DOUBLE"),
        ("mean_val_f1", "DOUBLE"),
        ("wall_s", "DOUBLE"),
        ("error", "VARCHAR"),
        ("outer_folds", "INTEGER"),
        ("sd_val_f1", "DOUBLE"),
        ("slice_f1_lo", "DOUBLE"),
        ("slice_f1_hi", "DOUBLE"),
        ("slice_auc_lo", "DOUBLE"),
        ("slice_auc_hi", "DOUBLE"),
        ("patient_f1_lo", "DOUBLE"),
        ("patient_f1_hi", "DOUBLE"),
        ("name", "VARCHAR"),
        ("tags", "VARCHAR[]"),
        ("note", "VARCHAR"),
    ],
    "runs": [
        ("run_id", "VARCHAR"),
        ("status", "VARCHAR"),
        ("started_at", "TIMESTAMP"),
        ("finished_at", "TIMESTAMP"),
        ("dataset", "VARCHAR"),
        ("dataset_hash", "VARCHAR"),
        ("config", "JSON"),
        ("config_hash", "VARCHAR"),
        ("backbone", "VARCHAR"),
        ("strategies", "VARCHAR[]"),
        ("ensemble", "VARCHAR"),
        ("patient_rule", "VARCHAR"),
        ("seed", "BIGINT"),
        ("preset", "VARCHAR"),
        ("device", "VARCHAR"),
        ("pretrained", "BOOLEAN"),
        ("pretrained_source", "VARCHAR"),
        ("threshold", "DOUBLE"),
        ("wall_s", "DOUBLE"),
        ("versions", "JSON"),
        ("git_sha", "VARCHAR"),
        ("split_hash", "VARCHAR"),
        ("grid_id", "VARCHAR"),
        ("error", "VARCHAR"),
        ("owner", "VARCHAR"),
        ("plugins", "JSON"),
        ("warnings", "JSON"),
        ("calibration", "JSON"),
        ("name", "VARCHAR"),
        ("tags", "VARCHAR[]"),
        ("note", "VARCHAR"),
    ],
    "splits": [
        ("run_id", "VARCHAR"),
        ("fold", "INTEGER"),
        ("patient_id", "INTEGER"),
        ("role", "VARCHAR"),
        ("outer_fold", "INTEGER"),
    ],
    "vote_vs_baselines": [
        ("run_id", "VARCHAR"),
        ("run_backbone", "VARCHAR"),
        ("strategies", "VARCHAR[]"),
        ("preset", "VARCHAR"),
        ("grid_id", "VARCHAR"),
        ("scope", "VARCHAR"),
        ("source", "VARCHAR"),
        ("baseline_model", "VARCHAR"),
        ("baseline_backbone", "VARCHAR"),
        ("setting", "VARCHAR"),
        ("baseline_fold", "INTEGER"),
        ("citation", "VARCHAR"),
        ("run_f1", "DOUBLE"),
        ("baseline_f1", "DOUBLE"),
        ("delta_f1", "DOUBLE"),
        ("run_sensitivity", "DOUBLE"),
        ("baseline_sensitivity", "DOUBLE"),
        ("delta_sensitivity", "DOUBLE"),
        ("run_specificity", "DOUBLE"),
        ("baseline_specificity", "DOUBLE"),
        ("delta_specificity", "DOUBLE"),
        ("run_precision", "DOUBLE"),
        ("baseline_precision", "DOUBLE"),
        ("delta_precision", "DOUBLE"),
        ("run_accuracy", "DOUBLE"),
        ("baseline_accuracy", "DOUBLE"),
        ("delta_accuracy", "DOUBLE"),
        ("beats_f1", "BOOLEAN"),
        ("f1_rank", "BIGINT"),
        ("f1_ranked_of", "BIGINT"),
        ("dataset", "VARCHAR"),
        ("comparable", "BOOLEAN"),
        ("baseline_f1_in_ci", "BOOLEAN"),
        ("baseline_sensitivity_in_ci", "BOOLEAN"),
        ("baseline_specificity_in_ci", "BOOLEAN"),
    ],
}


def test_schema_is_exactly_the_documented_one(store: Store) -> None:
    _, rows = store.query(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
    )
    schema: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in rows:
        schema.setdefault(table, []).append((column, dtype))
    assert schema == EXPECTED_SCHEMA
    _, views = store.query("SELECT view_name FROM duckdb_views() WHERE NOT internal")
    assert {v[0] for v in views} == {"run_summary", "vote_vs_baselines", "paired_patients"}


def test_schema_doc_names_every_table_and_column() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "store.md").read_text()
    for table, columns in EXPECTED_SCHEMA.items():
        assert f"`{table}`" in doc, table
        for column, _ in columns:
            assert f"`{column}`" in doc, f"{table}.{column}"


def test_migrations_are_recorded_once_and_reopening_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "runs.duckdb"
    first = Store(path)
    fill(first, "run-1")
    second = Store(path)
    _, rows = second.query("SELECT name FROM _migrations ORDER BY applied_at, name")
    assert [r[0] for r in rows] == [name for name, _ in migrations.MIGRATIONS]
    assert count(second, "baselines") == len(SEED_V1)
    assert second.get_run("run-1")["status"] == "finished"
    con = duckdb.connect(str(path))
    try:
        assert migrations.apply_migrations(con) == []
        assert migrations.pending(con) == []
    finally:
        con.close()


def test_a_failing_migration_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("CREATE TABLE half_done (x INTEGER)")
        raise duckdb.Error("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, ("m999", broken)])
    path = tmp_path / "runs.duckdb"
    with pytest.raises(StoreError, match="Upgrading the store"):
        Store(path)
    monkeypatch.undo()
    store = Store(path)
    assert count(store, "duckdb_tables()", "table_name = 'half_done'") == 0
    assert count(store, "_migrations", "name = 'm999'") == 0


# ------------------------------------------------------------------ round trips


def test_run_and_folds_round_trip(store: Store) -> None:
    run = make_run("run-1", grid_id="grid-a")
    store.create_run(run)
    assert store.get_run("run-1")["status"] == "running"
    assert store.finished_folds("run-1") == set()
    folds = {k: make_fold(k) for k in FOLD_PATIENTS}
    for fold in folds.values():
        store.write_fold("run-1", fold)
    assert store.finished_folds("run-1") == {(0, 0), (0, 1)}

    loaded = store.load_fold("run-1", 1)
    original = folds[1]
    for name in (
        "fold",
        "threshold",
        "best_epoch",
        "train_ich_before",
        "train_healthy_before",
        "train_ich",
        "train_healthy",
        "added",
        "removed",
        "train_patients",
        "val_patients",
        "wall_s",
        "checkpoint",
        "status",
    ):
        assert getattr(loaded, name) == getattr(original, name), name
    np.testing.assert_allclose(loaded.curve, original.curve, equal_nan=True)
    assert loaded.epochs == original.epochs

    order = np.lexsort(
        (original.predictions.slice, original.predictions.patient_id, original.predictions.split)
    )
    for column in ("split", "patient_id", "slice", "label", "prob"):
        np.testing.assert_array_equal(
            getattr(loaded.predictions, column), getattr(original.predictions, column)[order]
        )

    by_key = {(m.scope, m.split): m for m in loaded.metrics}
    assert len(by_key) == 4
    test_slice = by_key[("slice", "test")]
    assert test_slice.f1 == pytest.approx(0.6)
    assert test_slice.auc is None  # NaN is stored as NULL
    assert test_slice.ci["f1"] == (pytest.approx(0.5), pytest.approx(0.7))
    assert (test_slice.tp, test_slice.fp, test_slice.tn, test_slice.fn, test_slice.n) == (
        9,
        3,
        40,
        1,
        53,
    )

    stored = store.get_run("run-1")
    assert stored["config"]["cache"] == "/tmp/x"
    assert stored["versions"] == {"torch": "2.4", "ichbench": "0.1.0"}
    assert stored["strategies"] == ["augment:3.3", "weight:ich:4"]
    assert (stored["ensemble"], stored["patient_rule"]) == ("mean", "any")
    _, roles = store.query(
        "SELECT role, fold, count(*) FROM splits WHERE run_id = 'run-1' "
        "GROUP BY ALL ORDER BY role, fold"
    )
    assert roles == [
        ("test", None, 3),
        ("train", 0, 3),
        ("train", 1, 3),
        ("val", 0, 2),
        ("val", 1, 2),
    ]

    store.finish_run("run-1", make_vote(0.7), wall_s=30.0)
    finished = store.get_run("run")  # unique prefix
    assert finished["status"] == "finished"
    assert finished["threshold"] == pytest.approx(0.42)
    assert finished["wall_s"] == pytest.approx(30.0)
    assert finished["finished_at"] >= finished["started_at"]
    np.testing.assert_allclose(store.load_curve("run-1", None), np.linspace(0.1, 0.6, 101))
    assert len(store.load_vote_predictions("run-1")) == 60
    assert count(store, "predictions", "run_id = 'run-1' AND fold IS NULL") == 60

    [summary] = store.list_runs()
    assert summary["slice_f1"] == pytest.approx(0.7)
    assert summary["patient_f1"] == pytest.approx(0.7)
    assert summary["mean_val_f1"] == pytest.approx(0.65)
    assert summary["folds_finished"] == 2
    assert store.find_finished_run("cfg-1", "data-1") == "run-1"
    assert store.find_finished_run("cfg-1", "other-data") is None
    assert [m["model"] for m in store.run_metrics("run-1")][-2:] == ["vote", "vote"]


def make_patients(fold: int | None) -> PatientDecisions:
    val = [] if fold is None else FOLD_PATIENTS[fold]["val"]
    pids = [*val, *TEST_PATIENTS]
    return PatientDecisions(
        split=np.array(["val"] * len(val) + ["test"] * len(TEST_PATIENTS)),
        patient_id=np.array(pids, dtype=np.int64),
        label=np.array([p % 2 for p in pids], dtype=np.int64),
        score=np.array([np.nan if p == 2 else p / 20 for p in pids]),
        decision=np.array([p % 3 == 0 for p in pids]),
    )


def test_patient_decisions_notes_and_plugins_round_trip(store: Store) -> None:
    run = make_run("run-1")
    run.plugins = {"ichbench": "0.1.0", "ichbench-extra": "2.0"}
    store.create_run(run)
    folds = {}
    for k in FOLD_PATIENTS:
        folds[k] = make_fold(k)
        folds[k].patients = make_patients(k)
        folds[k].notes = {"augment": {"added": 69, "histogram": [0.1, 0.9]}}
        store.write_fold("run-1", folds[k])
    vote = make_vote()
    vote.patients = make_patients(None)
    store.finish_run("run-1", vote, wall_s=1.0)

    assert store.get_run("run-1")["plugins"] == run.plugins
    loaded = store.load_fold("run-1", 1)  # what a resumed run gets back
    assert loaded.notes == folds[1].notes
    assert loaded.patients is not None
    original = folds[1].patients
    order = np.lexsort((original.patient_id, original.split))
    for column in ("split", "patient_id", "label", "decision"):
        np.testing.assert_array_equal(
            getattr(loaded.patients, column), getattr(original, column)[order], err_msg=column
        )
    np.testing.assert_allclose(loaded.patients.score, original.score[order], equal_nan=True)

    stored = store.patient_decisions("run")
    assert sorted(stored, key=lambda k: (k is None, k)) == [0, 1, None]
    assert set(stored[None].split) == {"test"}
    assert stored[None].patient_id.tolist() == TEST_PATIENTS
    assert stored[None].decision.tolist() == [False, False, True]
    assert count(store, "patient_decisions", "fold IS NULL AND score IS NULL") == 1
    assert [f["notes"] for f in store.folds("run-1")] == [folds[0].notes, folds[1].notes]

    folds[0].patients = make_patients(0)
    folds[0].patients.decision = ~folds[0].patients.decision
    store.write_fold("run-1", folds[0])  # a rewritten fold replaces its decisions
    assert count(store, "patient_decisions", "fold = 0") == 5
    assert (
        store.patient_decisions("run-1")[0].decision.tolist()
        == folds[0]
        .patients.decision[np.lexsort((folds[0].patients.patient_id, folds[0].patients.split))]
        .tolist()
    )


def test_records_without_the_new_fields_write_nothing_for_them(store: Store) -> None:
    run = make_run("run-1")
    run.plugins = None  # type: ignore[assignment]  # a caller that predates the field
    store.create_run(run)
    fold = make_fold(0)
    fold.notes = None  # type: ignore[assignment]
    store.write_fold("run-1", fold)
    store.write_fold("run-1", make_fold(1))  # patients None, notes {}
    store.finish_run("run-1", make_vote(), wall_s=1.0)
    assert store.get_run("run-1")["plugins"] is None
    assert [f["notes"] for f in store.folds("run-1")] == [None, {}]
    assert store.patient_decisions("run-1") == {}
    assert count(store, "patient_decisions") == 0
    loaded = store.load_fold("run-1", 0)
    assert loaded.patients is None and loaded.notes == {}


def test_typed_reads_give_what_a_report_needs(store: Store) -> None:
    fill(store, "run-1")
    fill(store, "run-2", finish=False)
    split = store.split("run-1")
    assert split.test == TEST_PATIENTS
    assert split.folds == {
        k: {"train": sorted(v["train"]), "val": sorted(v["val"])} for k, v in FOLD_PATIENTS.items()
    }
    epochs = store.epoch_rows("run-1")
    assert [(e["fold"], e["epoch"]) for e in epochs] == [(f, e) for f in (0, 1) for e in range(3)]
    curves = store.curves("run-1")
    assert sorted(curves, key=lambda k: (k is None, k)) == [0, 1, None]
    thresholds, f1 = curves[0]
    assert thresholds[0] == 0 and thresholds[-1] == pytest.approx(1.0) and len(f1) == 101
    assert np.isnan(f1[-1]) and f1[0] == pytest.approx(0.2)
    assert None not in store.curves("run-2")
    preds = store.prediction_columns("run-1")
    assert set(preds) == {"fold", "split", "patient_id", "slice", "label", "prob"}
    assert len(preds["prob"]) == 2 * 100 + 60
    assert (preds["fold"] == -1).sum() == 60 and preds["prob"].dtype == np.float64
    assert list(preds["fold"]) == sorted(preds["fold"])
    assert len(store.prediction_columns("run-2")["prob"]) == 200
    with pytest.raises(StoreError, match="Unknown run"):
        store.curves("nope")


def test_readers_bind_values_never_format_them(store: Store) -> None:
    """A run id that looks like SQL is only ever a value."""
    nasty = "x' OR '1'='1"
    fill(store, nasty)
    fill(store, "other")
    assert len(store.run_metrics(nasty)) == 2 * 4 + 2
    assert {f["run_id"] for f in store.folds(nasty)} == {nasty}
    assert len(store.prediction_columns(nasty)["prob"]) == 260
    assert store.split(nasty).test == TEST_PATIENTS


def test_predictions_are_bulk_inserted_not_row_by_row(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create_run(make_run("run-1"))
    calls: list[str] = []
    real = duckdb.DuckDBPyConnection.executemany

    def spy(self: duckdb.DuckDBPyConnection, sql: str, *args: object) -> object:
        calls.append(sql)
        return real(self, sql, *args)

    monkeypatch.setattr(duckdb.DuckDBPyConnection, "executemany", spy)
    store.write_fold("run-1", make_fold(0, n_val=4000, n_test=6000))
    assert not [sql for sql in calls if "predictions" in sql]
    assert count(store, "predictions", "fold = 0") == 10_000


def test_list_runs_filters(store: Store) -> None:
    fill(store, "a-run", grid_id="g1")
    fill(store, "b-run", grid_id="g1", backbone="vgg16")
    fill(store, "c-run", finish=False)
    store.mark_run("c-run", "interrupted", error="KeyboardInterrupt")
    assert {r["run_id"] for r in store.list_runs(status="finished")} == {"a-run", "b-run"}
    assert [r["run_id"] for r in store.list_runs(backbone="vgg16")] == ["b-run"]
    assert {r["run_id"] for r in store.list_runs(grid_id="g1")} == {"a-run", "b-run"}
    assert len(store.list_runs(limit=1)) == 1
    with pytest.raises(StoreError, match="Unknown status 'done'"):
        store.list_runs(status="done")


def test_rewriting_a_fold_replaces_it(store: Store) -> None:
    store.create_run(make_run("run-1"))
    store.write_fold("run-1", make_fold(0, n_val=40, n_test=60, f1=0.5))
    store.write_fold("run-1", make_fold(0, n_val=10, n_test=20, f1=0.8))
    assert count(store, "folds") == 1
    assert count(store, "predictions") == 30
    assert count(store, "metrics") == 4
    assert count(store, "epochs") == 3
    assert count(store, "curves") == 101
    by_key = {(m.scope, m.split): m.f1 for m in store.load_fold("run-1", 0).metrics}
    assert by_key[("slice", "test")] == pytest.approx(0.8)


# ------------------------------------------------------------------ integrity


FOLD_TABLES = ("folds", "epochs", "metrics", "curves", "predictions")


def test_a_failed_write_fold_leaves_no_rows(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.create_run(make_run("run-1"))
    store.write_fold("run-1", make_fold(0, n_test=60))

    def explode(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(writes, "insert_curve", explode)  # after folds, epochs, metrics
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.write_fold("run-1", make_fold(1))
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.write_fold("run-1", make_fold(0, n_test=5))  # a rewrite that fails
    for table in FOLD_TABLES:
        assert count(store, table, "fold = 1") == 0, table
    assert count(store, "predictions", "fold = 0") == 100  # the old fold 0 is intact
    assert store.finished_folds("run-1") == {(0, 0)}


def test_write_fold_for_an_unknown_run_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="Unknown run 'nope'"):
        store.write_fold("nope", make_fold(0))
    assert count(store, "folds") == 0


def test_bad_records_are_store_errors_and_roll_back(store: Store) -> None:
    store.create_run(make_run("run-1"))
    with pytest.raises(StoreError, match="already exists"):
        store.create_run(make_run("run-1"))
    bad = make_fold(0)
    bad.predictions.prob = bad.predictions.prob[:-1]
    with pytest.raises(StoreError, match="different lengths"):
        store.write_fold("run-1", bad)
    bad = make_fold(0)
    bad.predictions.label[0] = 7
    with pytest.raises(StoreError, match="CHECK constraint"):
        store.write_fold("run-1", bad)
    for table in FOLD_TABLES:
        assert count(store, table) == 0, table


def test_a_run_that_did_not_finish_is_never_reported_finished(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create_run(make_run("run-1"))
    store.write_fold("run-1", make_fold(0))
    with pytest.raises(StoreError, match=r"cannot finish: fold\(s\) 1"):
        store.finish_run("run-1", make_vote(), wall_s=1.0)

    store.write_fold("run-1", make_fold(1))

    def explode(*args: object) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(writes, "insert_predictions", explode)
    with pytest.raises(RuntimeError):
        store.finish_run("run-1", make_vote(), wall_s=1.0)
    monkeypatch.undo()
    assert store.get_run("run-1")["status"] == "running"
    assert count(store, "metrics", "model = 'vote'") == 0
    assert store.list_runs()[0]["slice_f1"] is None

    store.mark_run("run-1", "interrupted", error="SIGINT")
    row = store.get_run("run-1")
    assert (row["status"], row["error"]) == ("interrupted", "SIGINT")
    with pytest.raises(StoreError, match="only through finish_run"):
        store.mark_run("run-1", "finished")
    with pytest.raises(StoreError, match="Cannot mark a run 'done'"):
        store.mark_run("run-1", "done")

    store.mark_run("run-1", "running")  # resumed
    store.finish_run("run-1", make_vote(), wall_s=1.0)
    with pytest.raises(StoreError, match="is finished"):
        store.mark_run("run-1", "failed", error="late")
    with pytest.raises(RunFinishedError, match="Run run-1 is already finished"):
        store.mark_run("run-1", "running")  # what a late resume meets
    assert store.get_run("run-1")["status"] == "finished"


def test_unknown_and_ambiguous_run_ids(store: Store) -> None:
    with pytest.raises(StoreError, match="Unknown run 'zzz'. The store has no runs yet"):
        store.get_run("zzz")
    fill(store, "run-aa", finish=False)
    fill(store, "run-ab", finish=False)
    with pytest.raises(StoreError, match=r"Unknown run 'zzz'. Recent runs: run-a[ab], run-a"):
        store.get_run("zzz")
    with pytest.raises(StoreError, match="ambiguous"):
        store.get_run("run-a")
    assert store.get_run("run-ab")["run_id"] == "run-ab"
    assert store.resolve("run-aa") == "run-aa"


def test_missing_store_is_not_created_by_readers(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.duckdb"
    with pytest.raises(StoreError, match=f"No store at {path}; run `ichbench run` first"):
        Store(path, create=False)
    assert not path.exists()


def test_corrupt_or_unwritable_stores_name_the_path(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(b"not a database" * 500)
    with pytest.raises(StoreError, match=str(corrupt)):
        Store(corrupt)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    unwritable = blocker / "runs.duckdb"
    with pytest.raises(StoreError, match=str(unwritable)):
        Store(unwritable)


# ------------------------------------------------------------------ read-only SQL


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with one finished run, built once for the tests that copy it."""
    path = tmp_path_factory.mktemp("finished") / "runs.duckdb"
    fill(Store(path), "run-1")
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE runs",
        "INSERT INTO runs (run_id, status, started_at) VALUES ('x', 'finished', now())",
        "UPDATE runs SET status = 'finished'",
        "DELETE FROM baselines",
        "CREATE TABLE t AS SELECT 1",
        "CREATE TEMP TABLE t AS SELECT 1",
        "ALTER TABLE runs ADD COLUMN x INTEGER",
        "ATTACH 'other.duckdb' AS other",
        "COPY runs TO 'out.csv'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "CHECKPOINT",
        "SELECT 1; DROP TABLE runs",
    ],
)
def test_sql_is_read_only(finished_store: Path, tmp_path: Path, sql: str) -> None:
    path = tmp_path / "runs.duckdb"
    shutil.copyfile(finished_store, path)
    store = Store(path, create=False)
    before = _digest(store.path)
    with pytest.raises(StoreError, match="read-only|one statement"):
        store.query(sql)
    assert _digest(store.path) == before
    assert store.get_run("run-1")["status"] == "finished"


def test_sql_cannot_read_files(store: Store, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n1,2\n")
    with pytest.raises(StoreError, match="read-only|disabled"):
        store.query(f"SELECT * FROM read_csv('{secret}')")


def test_sql_errors_are_store_errors(store: Store) -> None:
    with pytest.raises(StoreError, match="SQL error"):
        store.query("SELECT nope FROM runs")
    with pytest.raises(StoreError, match="SQL error"):
        store.query("SELEC 1")
    columns, rows = store.query("SELECT 1 AS one, 'x' AS two")
    assert (columns, rows) == (["one", "two"], [(1, "x")])


# ------------------------------------------------------------------ baselines


def test_baselines_are_seeded_with_citations(store: Store) -> None:
    rows = store.baselines()
    assert len(rows) == len(SEED_V1) == 21
    assert all(r["citation"] for r in rows)
    by = {
        (r["source"], r["model"], r["backbone"], r["setting"], r["scope"], r["fold"]): r
        for r in rows
    }
    vote = by[("hoseyni", "vote", "resnet50", "tuned", "slice", None)]
    assert vote["citation"] == HOSEYNI_CITATION
    assert [vote[m] for m in ("sensitivity", "specificity", "precision", "f1", "accuracy")] == [
        0.94,
        0.91,
        0.49,
        0.64,
        0.91,
    ]
    assert "3.3" in vote["note"] and "58 and 79" in vote["note"]
    assert by[("hoseyni", "fold", "resnet50", "tuned", "slice", 4)]["f1"] == 0.36
    assert by[("hoseyni", "vote", "resnet50", "tuned", "patient", None)]["f1"] == 0.86
    assert by[("hoseyni", "fold", "resnet50", "tuned", "patient", 4)]["sensitivity"] == 0.83
    assert by[("hoseyni", "vote", "mobilenetv2", "untuned", "slice", None)]["precision"] == 0.22
    neethi = by[("neethi2024", "single", "resnet50v2", "rsna-to-physionet", "slice", None)]
    assert (neethi["specificity"], neethi["accuracy"]) == (None, 0.54)
    kyung = by[("kyung2022", "single", "smart-net", "physionet", "patient", None)]
    assert (kyung["f1"], kyung["precision"]) == (0.84, None)


def test_did_i_beat_the_paper(store: Store) -> None:
    fill(store, "good", f1=0.70)
    fill(store, "weak", f1=0.50)
    fill(store, "unfinished", finish=False)
    _, rows = store.query(
        "SELECT run_id, delta_f1, beats_f1, f1_rank FROM vote_vs_baselines "
        "WHERE source = 'hoseyni' AND baseline_model = 'vote' AND scope = 'slice' "
        "AND baseline_backbone = 'resnet50' AND setting = 'tuned' ORDER BY run_id"
    )
    assert [(r[0], round(r[1], 2), r[2]) for r in rows] == [
        ("good", 0.06, True),
        ("weak", -0.14, False),
    ]
    assert rows[0][3] == 1  # 0.70 beats every slice-level baseline F1
    assert rows[1][3] > 1


# ------------------------------------------------------------------ concurrency


def _writer(path: str, worker: int) -> int:
    """Runs in a spawned process: two complete runs through short connections."""
    store = Store(path, lock_timeout=120)
    for k in range(2):
        run_id = f"w{worker}-r{k}"
        store.create_run(make_run(run_id))
        for fold in FOLD_PATIENTS:
            store.write_fold(run_id, make_fold(fold, n_val=800, n_test=1200, seed=worker))
        store.finish_run(run_id, make_vote(0.6, n_test=1200), wall_s=1.0)
    return worker


def test_concurrent_processes_share_one_store(tmp_path: Path) -> None:
    path = tmp_path / "shared.duckdb"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        done = pool.starmap(_writer, [(str(path), w) for w in range(3)])
    assert sorted(done) == [0, 1, 2]
    store = Store(path, create=False)
    runs = store.list_runs(status="finished")
    assert len(runs) == 6
    assert count(store, "folds") == 12
    assert count(store, "predictions") == 6 * (2 * 2000 + 1200)
    assert count(store, "baselines") == len(SEED_V1)
    assert count(store, "_migrations") == len(migrations.MIGRATIONS)


def _hold_lock(path: str, ready: object, release: object) -> None:
    con = duckdb.connect(path)
    ready.set()  # type: ignore[attr-defined]
    release.wait(60)  # type: ignore[attr-defined]
    con.close()


def test_a_locked_store_is_waited_for_then_reported(tmp_path: Path) -> None:
    path = tmp_path / "runs.duckdb"
    Store(path)
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(StoreError, match="stayed locked by another process"):
            Store(path, lock_timeout=0.2).list_runs()
        timer = threading.Timer(0.5, release.set)
        timer.start()
        assert Store(path, lock_timeout=60).list_runs() == []
        timer.join()
    finally:
        release.set()
        holder.join(60)
    assert holder.exitcode == 0


def test_only_the_papers_data_and_setup_compare_like_for_like(store: Store) -> None:
    from dataclasses import replace

    fill(store, "phantoms", f1=0.70)  # a resnet50 on synthetic data
    paper_like = replace(
        make_run("real"), dataset="physionet:/data/ct-ich", preset="paper", pretrained=True
    )
    store.create_run(paper_like)
    for fold in FOLD_PATIENTS:
        store.write_fold("real", make_fold(fold))
    vote = make_vote(0.64)
    slice_row = next(m for m in vote.metrics if m.scope == "slice")
    slice_row.ci = {"f1": (0.60, 0.68)}
    store.finish_run("real", vote, wall_s=1.0)
    assert (store.comparable("phantoms"), store.comparable("real")) == (False, True)
    _, rows = store.query(
        "SELECT run_id, baseline_f1, baseline_f1_in_ci FROM vote_vs_baselines "
        "WHERE run_id = 'real' AND scope = 'slice' AND baseline_f1 IS NOT NULL"
    )
    assert rows and all(inside == (0.60 <= reported <= 0.68) for _, reported, inside in rows)
    assert any(inside for *_, inside in rows) and not all(inside for *_, inside in rows)
    fill(store, "half", finish=False)
    assert store.comparable("half") is None
