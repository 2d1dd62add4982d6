"""Records to rows and back: the conversions every store operation shares.

Masked, None and NaN values all become SQL NULL on the way in; on the way out NULL
probabilities and scores become NaN again, so arrays keep their float dtype.
"""

from __future__ import annotations

import json
import math
from typing import Any

import duckdb
import numpy as np

from ichbench.errors import StoreError
from ichbench.records import METRIC_NAMES, MetricRow, PatientDecisions, Predictions

METRIC_COLUMNS = (
    [
        "run_id",
        "fold",
        "model",
        "scope",
        "split",
        "threshold",
        *METRIC_NAMES,
        "tp",
        "fp",
        "tn",
        "fn",
        "n",
    ]
    + [f"{m}_{end}" for m in METRIC_NAMES for end in ("lo", "hi")]
    + ["ci_method", "outer_fold", "brier", "ece"]
)
FLOAT_METRIC_COLUMNS = frozenset(
    ["threshold", *METRIC_NAMES, "brier", "ece"]
    + [f"{m}_{end}" for m in METRIC_NAMES for end in ("lo", "hi")]
)
FOLD_COLUMNS = (
    "run_id",
    "fold",
    "status",
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
    "written_at",
    "compiled",
    "notes",
    "outer_fold",
)
JSON_COLUMNS = {
    "runs": ("config", "versions", "plugins", "warnings", "calibration"),
    "folds": ("notes",),
}


def num(value: Any) -> float | None:
    """Masked, None and NaN metrics all become SQL NULL."""
    if value is None or value is np.ma.masked:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def integer(value: Any) -> int | None:
    return None if value is None else int(value)


def to_json(value: Any) -> str:
    """Configs may hold paths and tuples: store them as their string / list form."""
    return json.dumps(value, sort_keys=True, default=str)


def optional_json(value: Any) -> str | None:
    """A record field that an older caller leaves None is stored as NULL."""
    return None if value is None else to_json(value)


def decode_json(row: dict[str, Any], table: str) -> dict[str, Any]:
    """JSON columns of a `runs` or `folds` row as Python values (NULL stays None)."""
    for key in JSON_COLUMNS[table]:
        if key in row and isinstance(row[key], str):
            row[key] = json.loads(row[key])
    return row


def curve_thresholds(n: int) -> np.ndarray:
    """Curves are F1 at evenly spaced thresholds from 0 to 1 (0.00, 0.01, ... 1.00)."""
    return np.round(np.linspace(0.0, 1.0, n), 6) if n > 1 else np.zeros(n)


def dicts(result: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    columns = [d[0] for d in result.description]
    return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


def scan_insert(
    con: duckdb.DuckDBPyConnection, frame: dict[str, np.ndarray], sql: str, params: list[Any]
) -> None:
    """Bulk insert: DuckDB scans the numpy columns directly, no row-by-row binding.
    On failure the view is left to die with the connection: unregistering inside an
    aborted transaction would hide the real error."""
    name = "_ichbench_frame"
    con.register(name, frame)
    con.execute(sql.format(frame=name), params)
    con.unregister(name)


def _check_lengths(
    frame: dict[str, np.ndarray], what: str, run_id: str, fold: int | None
) -> dict[str, np.ndarray]:
    lengths = {name: len(values) for name, values in frame.items()}
    if len(set(lengths.values())) > 1:
        where = "the vote" if fold is None else f"fold {fold}"
        raise StoreError(
            f"{what} of {where} of run '{run_id}' have columns of different lengths: {lengths}"
        )
    return frame


def prediction_frame(
    preds: Predictions,
    run_id: str,
    fold: int | None,
) -> dict[str, np.ndarray]:
    frame = {
        "split": np.asarray(preds.split).astype(str).reshape(-1),
        "patient_id": np.asarray(preds.patient_id, dtype=np.int64).reshape(-1),
        "slice": np.asarray(preds.slice, dtype=np.int64).reshape(-1),
        "label": np.asarray(preds.label, dtype=np.int64).reshape(-1),
        "prob": np.asarray(preds.prob, dtype=np.float64).reshape(-1),
    }
    return _check_lengths(frame, "Predictions", run_id, fold)


def patient_frame(
    patients: PatientDecisions,
    run_id: str,
    fold: int | None,
) -> dict[str, np.ndarray]:
    frame = {
        "split": np.asarray(patients.split).astype(str).reshape(-1),
        "patient_id": np.asarray(patients.patient_id, dtype=np.int64).reshape(-1),
        "label": np.asarray(patients.label, dtype=np.int64).reshape(-1),
        "score": np.asarray(patients.score, dtype=np.float64).reshape(-1),
        "decision": np.asarray(patients.decision, dtype=bool).reshape(-1),
    }
    return _check_lengths(frame, "Patient decisions", run_id, fold)


def predictions_from(cols: dict[str, Any]) -> Predictions:
    return Predictions(
        split=np.asarray(cols["split"], dtype=str),
        patient_id=np.asarray(cols["patient_id"], dtype=np.int64),
        slice=np.asarray(cols["slice"], dtype=np.int64),
        label=np.asarray(cols["label"], dtype=np.int64),
        prob=np.asarray(cols["prob"], dtype=np.float64),
    )


def patients_from(cols: dict[str, Any]) -> PatientDecisions:
    return PatientDecisions(
        split=np.asarray(cols["split"], dtype=str),
        patient_id=np.asarray(cols["patient_id"], dtype=np.int64),
        label=np.asarray(cols["label"], dtype=np.int64),
        score=np.asarray(cols["score"], dtype=np.float64),
        decision=np.asarray(cols["decision"], dtype=bool),
    )


def metric_values(row: dict[str, Any]) -> list[Any]:
    """One `metrics` row in METRIC_COLUMNS order, NaN and masked values as NULL."""
    return [
        num(row[c])
        if c in FLOAT_METRIC_COLUMNS
        else integer(row[c])
        if c in ("fold", "outer_fold", "tp", "fp", "tn", "fn", "n")
        else row[c]
        for c in METRIC_COLUMNS
    ]


def metric_row(row: dict[str, Any]) -> MetricRow:
    ci = {
        m: (row[f"{m}_lo"], row[f"{m}_hi"])
        for m in METRIC_NAMES
        if row[f"{m}_lo"] is not None or row[f"{m}_hi"] is not None
    }
    return MetricRow(
        model=row["model"],
        fold=row["fold"],
        scope=row["scope"],
        split=row["split"],
        threshold=row["threshold"],
        sensitivity=row["sensitivity"],
        specificity=row["specificity"],
        precision=row["precision"],
        f1=row["f1"],
        accuracy=row["accuracy"],
        auc=row["auc"],
        tp=row["tp"],
        fp=row["fp"],
        tn=row["tn"],
        fn=row["fn"],
        n=row["n"],
        ci=ci,
        ci_method=row["ci_method"] or "",
        brier=row.get("brier"),
        ece=row.get("ece"),
    )
