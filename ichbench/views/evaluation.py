"""A run's evaluations on other datasets as tables, beside its own held-out test result:
how much of the internal figure survives another hospital's scans is the question an
external validation answers, so the two are always shown together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ichbench.formatting import DASH, fmt_time
from ichbench.views.metrics import metric_cell
from ichbench.views.model import Row, TableData

if TYPE_CHECKING:
    from ichbench.store import Store

SLICE = ("f1", "auc")
PATIENT = ("sensitivity", "specificity", "f1", "auc")
SHORT = {"sensitivity": "Sens", "specificity": "Spec", "f1": "F1", "auc": "AUC"}
LONG = {"sensitivity": "Sensitivity", "specificity": "Specificity", "f1": "F1", "auc": "AUC"}


def _columns(short: bool) -> list[str]:
    names = SHORT if short else LONG
    return (
        ["Evaluated on", "Patients", "Slices"]
        + [f"Slice {names[m]}" for m in SLICE]
        + [f"Patient {names[m]}" for m in PATIENT]
    )


def _cells(metrics: dict[str, dict[str, Any]]) -> list[str]:
    slice_row, patient_row = metrics.get("slice"), metrics.get("patient")
    return [metric_cell(slice_row, m) if slice_row else DASH for m in SLICE] + [
        metric_cell(patient_row, m) if patient_row else DASH for m in PATIENT
    ]


def internal_metrics(store: Store, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's own headline vote on its held-out test patients, by scope."""
    return {
        m["scope"]: m
        for m in store.run_metrics(run_id)
        if m["model"] == "vote" and m["split"] == "test" and m.get("outer_fold") is None
    }


def evaluations_table(
    run: dict[str, Any],
    internal: dict[str, dict[str, Any]],
    evaluations: list[dict[str, Any]],
    table_id: str = "table-evaluations",
) -> TableData:
    """The run's internal test result, then one row per evaluation, each with 95% CIs
    (slice level only where the dataset labels slices)."""
    rows = []
    if internal:
        patients = internal.get("patient", {}).get("n")
        slices = internal.get("slice", {}).get("n")
        rows.append(
            Row(
                [
                    f"{run.get('dataset')} (own test set)",
                    str(patients) if patients is not None else DASH,
                    str(slices) if slices is not None else DASH,
                    *_cells(internal),
                ],
                muted=True,
            )
        )
    for ev in evaluations:
        # the dataset, and the end of the evaluation's id (the random part, as a run's),
        # with its date: short enough that the table fits a terminal's 80 columns
        label = f"{ev['dataset']} ({ev['evaluation_id'][-6:]}, {fmt_time(ev['created_at'])[:10]})"
        rows.append(
            Row(
                [label, str(ev["patients"]), str(ev["slices"]), *_cells(ev["metrics"])],
                strong=True,
            )
        )
    lacking = [ev["dataset"] for ev in evaluations if not ev["slice_labels"]]
    caption = (
        "The run's fold models, ensemble rule, voting threshold and patient rule applied "
        "unchanged to every patient of another dataset, beside the run's own held-out test "
        "result. 95% CIs in brackets (slices: patient bootstrap; patients: Wilson, F1 and "
        "AUC bootstrap)."
    )
    note = ""
    if lacking:
        note = (
            f"{', '.join(dict.fromkeys(lacking))}: labelled per patient only, so no "
            "slice-level figures."
        )
    return TableData(
        id=table_id,
        title=f"External validation of run {run['run_id']}",
        columns=_columns(False),
        rows=rows,
        caption=caption + (f" {note}" if note else ""),
        numeric_from=1,
        short_title="Evaluations on other datasets",
        short_columns=_columns(True),
        note=note,
    )


def show_evaluations(store: Store, run_id: str) -> TableData | None:
    """What `ichbench show` prints of a run's evaluations: None when it has none."""
    evaluations = store.evaluations(run_id)
    if not evaluations:
        return None
    run = store.get_run(run_id)
    return evaluations_table(run, internal_metrics(store, run["run_id"]), evaluations)


def evaluation_metrics_table(evaluation: dict[str, Any]) -> TableData:
    """One evaluation's metrics, a row per scope, every metric with its 95% CI (what
    `ichbench evaluate` prints)."""
    names = ("sensitivity", "specificity", "precision", "f1", "accuracy", "auc")
    rows = [
        Row(
            [scope, str(m.get("n")), *[metric_cell(m, n) for n in names]],
            strong=scope == "patient",
        )
        for scope in ("slice", "patient")
        if (m := evaluation["metrics"].get(scope)) is not None
    ]
    return TableData(
        id="table-evaluation",
        title=f"Run {evaluation['run_id']} on {evaluation['dataset']}",
        columns=[
            "Level",
            "n",
            "Sensitivity",
            "Specificity",
            "Precision",
            "F1",
            "Accuracy",
            "AUC",
        ],
        rows=rows,
        caption=f"Evaluation {evaluation['evaluation_id']}; 95% CIs in brackets.",
        numeric_from=1,
        short_columns=["Level", "n", "Sens", "Spec", "Prec", "F1", "Acc", "AUC"],
        note=""
        if evaluation["slice_labels"]
        else "Labelled per patient only: no slice-level figures.",
    )
