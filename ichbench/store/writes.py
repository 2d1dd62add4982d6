"""How each row family of a record is inserted, inside the caller's transaction: the
run's split, a fold's row, its epochs, metrics, curve, predictions and patient
decisions. `Store` decides when (which transaction, what is replaced first); these decide
how, so every writer of a row family writes it the same way."""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import numpy as np

from ichbench.records import (
    EpochRecord,
    FoldRecord,
    MetricRow,
    PatientDecisions,
    Predictions,
    RunRecord,
)
from ichbench.store.rows import (
    FOLD_COLUMNS,
    METRIC_COLUMNS,
    curve_thresholds,
    integer,
    metric_values,
    num,
    optional_json,
    patient_frame,
    prediction_frame,
    scan_insert,
)


def now() -> datetime:
    """Timestamps are stored in UTC without a zone (DuckDB TIMESTAMP)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def insert_splits(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    rows: list[tuple[str, int | None, int, str, int]] = []
    for outer, (test, folds) in enumerate(run.outer_splits()):
        rows += [(run.run_id, None, int(pid), "test", outer) for pid in test]
        for fold, parts in sorted(folds.items(), key=lambda kv: int(kv[0])):
            for role in ("train", "val"):
                rows += [
                    (run.run_id, int(fold), int(pid), role, outer) for pid in parts.get(role, [])
                ]
    if rows:
        con.executemany(
            "INSERT INTO splits (run_id, fold, patient_id, role, outer_fold) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )


def insert_fold_row(con: duckdb.DuckDBPyConnection, run_id: str, fold: FoldRecord) -> None:
    values = [
        run_id,
        int(fold.fold),
        fold.status,
        num(fold.threshold),
        integer(fold.best_epoch),
        integer(fold.train_ich_before),
        integer(fold.train_healthy_before),
        integer(fold.train_ich),
        integer(fold.train_healthy),
        integer(fold.added),
        integer(fold.removed),
        [int(p) for p in fold.train_patients],
        [int(p) for p in fold.val_patients],
        num(fold.wall_s),
        fold.checkpoint,
        now(),
        bool(fold.compiled),
        optional_json(getattr(fold, "notes", None)),
        int(fold.outer),
    ]
    marks = ", ".join("?" for _ in FOLD_COLUMNS)
    con.execute(f"INSERT INTO folds ({', '.join(FOLD_COLUMNS)}) VALUES ({marks})", values)


def insert_epochs(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    fold: int,
    epochs: list[EpochRecord],
    outer: int = 0,
) -> None:
    if epochs:
        con.executemany(
            "INSERT INTO epochs (run_id, fold, epoch, train_loss, val_loss, val_f1, wall_s, "
            "outer_fold) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    run_id,
                    fold,
                    int(e.epoch),
                    num(e.train_loss),
                    num(e.val_loss),
                    num(e.val_f1),
                    num(e.wall_s),
                    outer,
                )
                for e in epochs
            ],
        )


def insert_metrics(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    fold: int | None,
    rows: list[MetricRow],
    outer: int | None = 0,
) -> None:
    """A fold's rows (`fold` given) or a vote's (`fold` None); `outer` the outer fold,
    None for the run's headline vote."""
    if not rows:
        return
    model = "vote" if fold is None else "fold"
    values = []
    for metric in rows:
        row = metric.as_row()
        row.update(run_id=run_id, fold=fold, model=model, outer_fold=outer)
        values.append(metric_values(row))
    marks = ", ".join("?" for _ in METRIC_COLUMNS)
    con.executemany(f"INSERT INTO metrics ({', '.join(METRIC_COLUMNS)}) VALUES ({marks})", values)


def insert_curve(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    fold: int | None,
    curve: np.ndarray,
    outer: int | None = 0,
) -> None:
    f1 = np.asarray(curve, dtype=np.float64).reshape(-1)
    if f1.size == 0:
        return
    scan_insert(
        con,
        {"threshold": curve_thresholds(f1.size), "f1": f1},
        "INSERT INTO curves (run_id, fold, threshold, f1, outer_fold) SELECT ?, ?, threshold, "
        "CASE WHEN isnan(f1) THEN NULL ELSE f1 END, ? FROM {frame}",
        [run_id, fold, outer],
    )


def insert_predictions(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    fold: int | None,
    preds: Predictions,
    outer: int | None = 0,
    decisions: np.ndarray | None = None,
) -> None:
    """A model's predictions; `decisions` (the vote's, one per row) stored beside them."""
    frame = prediction_frame(preds, run_id, fold)
    if not len(frame["prob"]):
        return
    if decisions is not None:
        decisions = np.asarray(decisions, dtype=bool).reshape(-1)
        if len(decisions) != len(frame["prob"]):
            raise ValueError(
                f"Run {run_id}: {len(decisions)} vote decisions for {len(frame['prob'])} "
                "predictions"
            )
    frame["decision"] = np.zeros(len(frame["prob"]), dtype=bool) if decisions is None else decisions
    scan_insert(
        con,
        frame,
        "INSERT INTO predictions (run_id, fold, split, patient_id, slice, label, prob, "
        "outer_fold, decision) SELECT ?, ?, split, patient_id, slice, label, "
        "CASE WHEN isnan(prob) THEN NULL ELSE prob END, ?, "
        "CASE WHEN ? THEN decision END FROM {frame}",
        [run_id, fold, outer, decisions is not None],
    )


def insert_patients(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    fold: int | None,
    patients: PatientDecisions | None,
    outer: int | None = 0,
) -> None:
    """A record built without patient decisions (None) writes none."""
    if patients is None:
        return
    frame = patient_frame(patients, run_id, fold)
    if not len(frame["patient_id"]):
        return
    scan_insert(
        con,
        frame,
        "INSERT INTO patient_decisions (run_id, fold, split, patient_id, label, score, "
        "decision, outer_fold) SELECT ?, ?, split, patient_id, label, "
        "CASE WHEN isnan(score) THEN NULL ELSE score END, decision, ? FROM {frame}",
        [run_id, fold, outer],
    )


# --------------------------------------------------------------------------- evaluations

EVALUATION_METRIC_COLUMNS = [
    c for c in METRIC_COLUMNS if c not in ("run_id", "fold", "model", "split", "outer_fold")
]


def insert_evaluation(con: duckdb.DuckDBPyConnection, evaluation) -> None:
    """An evaluation (`ichbench.evaluation.EvaluationRecord`) whole: its row, its metrics
    (one row per scope it has), every slice's score and decision and every patient's;
    a slice without a label (a dataset labelled per patient) has label NULL."""
    ev, run_id = evaluation.evaluation_id, evaluation.run_id
    con.execute(
        "INSERT INTO evaluations (evaluation_id, run_id, dataset, dataset_hash, source, "
        "created_at, patients, slices, slice_labels, threshold, preprocessing, device, "
        "wall_s, ichbench_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            ev,
            run_id,
            evaluation.dataset,
            evaluation.dataset_hash,
            evaluation.source,
            evaluation.created_at,
            int(evaluation.patients),
            int(evaluation.slices),
            bool(evaluation.slice_labels),
            num(evaluation.threshold),
            optional_json(evaluation.preprocessing),
            evaluation.device,
            num(evaluation.wall_s),
            evaluation.version,
        ],
    )
    for metric in evaluation.metrics:
        row = metric.as_row()
        row.update(run_id=run_id, fold=None, model="vote", outer_fold=None)
        values = dict(zip(METRIC_COLUMNS, metric_values(row), strict=True))
        names = EVALUATION_METRIC_COLUMNS
        con.execute(
            f"INSERT INTO evaluation_metrics (evaluation_id, run_id, {', '.join(names)}) "
            f"VALUES (?, ?, {', '.join('?' for _ in names)})",
            [ev, run_id, *[values[c] for c in names]],
        )
    slices = evaluation.slice_frame()
    if len(slices["patient_id"]):
        scan_insert(
            con,
            slices,
            "INSERT INTO evaluation_predictions (evaluation_id, run_id, patient_id, slice, "
            "label, prob, decision) SELECT ?, ?, patient_id, slice, "
            "CASE WHEN label < 0 THEN NULL ELSE label END, "
            "CASE WHEN isnan(prob) THEN NULL ELSE prob END, decision FROM {frame}",
            [ev, run_id],
        )
    patients = evaluation.patient_frame()
    if len(patients["patient_id"]):
        scan_insert(
            con,
            patients,
            "INSERT INTO evaluation_patients (evaluation_id, run_id, patient_id, label, "
            "score, decision) SELECT ?, ?, patient_id, label, "
            "CASE WHEN isnan(score) THEN NULL ELSE score END, decision FROM {frame}",
            [ev, run_id],
        )
