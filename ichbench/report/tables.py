"""What a report reads from the store, and the tables it shows.

Everything here comes from the store alone (runs, metrics, curves, predictions, splits,
epochs, baselines), so a report of a run says exactly what was recorded when it ran.
Tables are plain data (`TableData`) that the page builder renders as HTML and Markdown;
the run's own rows and the literature's rows share the same columns so that "did I beat
the paper?" is read straight down a column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ichbench.formatting import DASH, fmt, fmt_wall  # noqa: F401  (re-exported)
from ichbench.records import METRIC_NAMES
from ichbench.store.baselines import HOSEYNI, baseline_label, paper_and_cited

HEADERS = {"sensitivity": "Sensitivity", "specificity": "Specificity",
           "precision": "Precision", "f1": "F1", "accuracy": "Accuracy", "auc": "AUC"}
SHORT = {"sensitivity": "Sens", "specificity": "Spec", "precision": "Prec", "f1": "F1",
         "accuracy": "Acc", "auc": "AUC"}
PAPER_NAME = "Hoseyni et al."


# ---------------------------------------------------------------- formatting


def metric_cell(row: dict[str, Any], name: str) -> str:
    return fmt(row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi"))


# ---------------------------------------------------------------- table model


@dataclass
class Row:
    """One table row. `group` rows are headings that span the table (e.g. the literature
    block); `strong` rows are the ones a reader should look at first (the vote)."""

    cells: list[str]
    strong: bool = False
    muted: bool = False
    group: bool = False


@dataclass
class TableData:
    id: str
    title: str
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    caption: str = ""
    numeric_from: int = 1  # columns from this index on are right-aligned numbers


# ---------------------------------------------------------------- run data


@dataclass
class RunData:
    """One run as recorded in the store."""

    run: dict[str, Any]
    metrics: list[dict[str, Any]]
    folds: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    curves: dict[int | None, tuple[np.ndarray, np.ndarray]]  # fold -> (thresholds, f1)
    predictions: dict[str, np.ndarray]  # fold (-1 = vote), split, patient_id, slice, label, prob
    test_patients: list[int]
    fold_patients: dict[int, dict[str, list[int]]]

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    @property
    def status(self) -> str:
        return str(self.run["status"])

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def threshold(self) -> float | None:
        return self.run.get("threshold")

    @property
    def config(self) -> dict[str, Any]:
        return self.run.get("config") or {}

    @property
    def fold_indices(self) -> list[int]:
        return sorted(self.fold_patients)

    def metric(self, model: str, scope: str, split: str,
               fold: int | None = None) -> dict[str, Any] | None:
        for m in self.metrics:
            if (m["model"], m["scope"], m["split"]) == (model, scope, split) and \
                    (model == "vote" or m["fold"] == fold):
                return m
        return None

    def preds(self, fold: int | None, split: str) -> dict[str, np.ndarray]:
        """Predictions of one fold model (or the vote, fold None) on one split."""
        key = -1 if fold is None else fold
        mask = (self.predictions["fold"] == key) & (self.predictions["split"] == split)
        return {k: v[mask] for k, v in self.predictions.items()}

    def best_fold(self) -> int | None:
        """The fold whose model has the highest validation F1 (slice level)."""
        scored = [(m["f1"], -m["fold"]) for m in self.metrics
                  if m["model"] == "fold" and m["scope"] == "slice" and m["split"] == "val"
                  and m["f1"] is not None]
        return -max(scored)[1] if scored else (self.fold_indices[0] if self.folds else None)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _records(store, sql: str) -> list[dict[str, Any]]:
    columns, rows = store.query(sql)
    return [dict(zip(columns, r, strict=True)) for r in rows]


def load_run_data(store, run_id: str) -> RunData:
    """Everything a report shows about one run; raises StoreError for an unknown id."""
    run = store.get_run(run_id)
    rid = _quote(run["run_id"])
    metrics = store.run_metrics(run["run_id"])
    folds = _records(store, f"SELECT * FROM folds WHERE run_id = {rid} ORDER BY fold")
    epochs = _records(store, f"SELECT * FROM epochs WHERE run_id = {rid} ORDER BY fold, epoch")
    curves: dict[int | None, tuple[list[float], list[float]]] = {}
    for r in _records(store, f"SELECT fold, threshold, f1 FROM curves WHERE run_id = {rid} "
                             "ORDER BY fold NULLS LAST, threshold"):
        thr, f1 = curves.setdefault(r["fold"], ([], []))
        thr.append(r["threshold"])
        f1.append(np.nan if r["f1"] is None else r["f1"])
    columns, rows = store.query(
        "SELECT coalesce(fold, -1) AS fold, split, patient_id, slice, label, "
        f"coalesce(prob, 'NaN'::DOUBLE) AS prob FROM predictions WHERE run_id = {rid} "
        "ORDER BY fold, split, patient_id, slice")
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in columns]
    dtypes = {"fold": np.int64, "split": str, "patient_id": np.int64, "slice": np.int64,
              "label": np.int64, "prob": np.float64}
    predictions = {name: np.asarray(values, dtype=dtypes[name])
                   for name, values in zip(columns, cols, strict=True)}
    test: list[int] = []
    fold_patients: dict[int, dict[str, list[int]]] = {}
    for r in _records(store, f"SELECT fold, patient_id, role FROM splits WHERE run_id = {rid} "
                             "ORDER BY fold NULLS FIRST, role, patient_id"):
        if r["role"] == "test":
            test.append(int(r["patient_id"]))
        else:
            fold_patients.setdefault(int(r["fold"]), {"train": [], "val": []})[r["role"]].append(
                int(r["patient_id"]))
    return RunData(
        run=run, metrics=metrics, folds=folds, epochs=epochs,
        curves={k: (np.asarray(t, dtype=float), np.asarray(f, dtype=float))
                for k, (t, f) in curves.items()},
        predictions=predictions, test_patients=test, fold_patients=fold_patients,
    )


# ---------------------------------------------------------------- tables


def status_note(data: RunData) -> str:
    """A warning for a run that did not finish; empty for a finished one."""
    if data.finished:
        return ""
    done = sum(1 for f in data.folds if f["status"] == "finished")
    total = len(data.fold_patients) or len(data.folds)
    text = (f"Run {data.run_id} is {data.status.upper()}, not finished: {done} of {total} "
            "folds were recorded and there is no vote. Its numbers are partial.")
    if data.run.get("error"):
        text += f" Error: {data.run['error']}"
    return text


def _metric_columns() -> list[str]:
    return ["Model", "Threshold", *[HEADERS[m] for m in METRIC_NAMES], "n"]


def _fold_rows(data: RunData, scope: str) -> list[Row]:
    rows = []
    for fold in data.fold_indices:
        m = data.metric("fold", scope, "test", fold)
        if m is None:
            rows.append(Row([f"Fold {fold}", DASH, *[DASH] * len(METRIC_NAMES),
                             "not recorded"], muted=True))
            continue
        rows.append(Row([f"Fold {fold}", fmt(m["threshold"]),
                         *[metric_cell(m, n) for n in METRIC_NAMES], str(m["n"])]))
    vote = data.metric("vote", scope, "test")
    if vote is not None:
        rows.append(Row(["Voting", fmt(vote["threshold"]),
                         *[metric_cell(vote, n) for n in METRIC_NAMES], str(vote["n"])],
                        strong=True))
    else:
        rows.append(Row(["Voting", DASH, *[DASH] * len(METRIC_NAMES),
                         f"none: run {data.status}"], muted=True))
    return rows


def _baseline_label(b: dict[str, Any]) -> str:
    return baseline_label(b, vote="Voting", fold="Fold {fold}")


def _baseline_rows(baselines: list[dict[str, Any]], scope: str) -> list[Row]:
    """The paper's tuned ResNet50 folds and vote at one scope, then other groups'."""
    paper, others = paper_and_cited(baselines, scope)
    rows = []
    if paper:
        rows.append(Row([f"Reported by {PAPER_NAME} (ResNet50, tuned; no CIs published)"],
                        group=True))
        rows += [Row([_baseline_label(b), DASH, *[fmt(b.get(n)) for n in METRIC_NAMES], DASH],
                     muted=True, strong=b["model"] == "vote") for b in paper]
    if others:
        rows.append(Row(["Other published results (as cited by Hoseyni et al.)"], group=True))
        rows += [Row([_baseline_label(b), DASH, *[fmt(b.get(n)) for n in METRIC_NAMES], DASH],
                     muted=True) for b in others]
    return rows


def metrics_table(data: RunData, baselines: list[dict[str, Any]], scope: str,
                  table_id: str) -> TableData:
    """Table I (slice level) or Table III (patient level): the folds and the vote on the
    test set with 95% CIs, and the literature's numbers below in the same columns."""
    shape = "Table I" if scope == "slice" else "Table III"
    title = (f"{scope.title()}-level results on the test set, per fold and voting "
             f"({shape} of the paper)")
    if not data.finished:
        title += f" — run {data.status.upper()}, partial"
    ci = ("patient-level bootstrap" if scope == "slice"
          else "Wilson intervals for proportions, bootstrap for F1 and AUC")
    unit = "slices" if scope == "slice" else "patients"
    caption = (f"Each fold's model at its own validation threshold; the vote combines the "
               f"fold models ({data.run.get('ensemble') or 'mean'}) at the voting threshold"
               + (f" ({fmt(data.threshold)})" if data.threshold is not None else "")
               + f". 95% CIs in brackets ({ci}). n = test {unit}.")
    if scope == "patient":
        caption += (f" Patient rule: {data.run.get('patient_rule') or 'any'} "
                    "(the paper's: positive if any slice is).")
    return TableData(id=table_id, title=title, columns=_metric_columns(),
                     rows=_fold_rows(data, scope) + _baseline_rows(baselines, scope),
                     caption=caption)


def _setting_text(run: dict[str, Any]) -> str:
    strategies = list(run.get("strategies") or [])
    return ", ".join(strategies) if strategies else "none"


def compare_table(runs: list[RunData], baselines: list[dict[str, Any]],
                  table_id: str) -> TableData:
    """Table II's shape: one row per run (backbone and configuration), the vote's test
    metrics, then the paper's backbones with and without the tuned configuration."""
    slice_names = list(METRIC_NAMES)
    patient_names = ["sensitivity", "specificity", "f1"]
    columns = (["Run", "Status", "Backbone", "Configuration", "Threshold"]
               + [f"Slice {SHORT[m]}" for m in slice_names]
               + [f"Patient {SHORT[m]}" for m in patient_names] + ["Mean val F1"])
    rows: list[Row] = []
    for data in runs:
        s = data.metric("vote", "slice", "test") or {}
        p = data.metric("vote", "patient", "test") or {}
        vals = [m["f1"] for m in data.metrics if m["model"] == "fold" and m["scope"] == "slice"
                and m["split"] == "val" and m["f1"] is not None]
        status = data.status if data.finished else f"{data.status.upper()} (partial)"
        pre = "pretrained" if data.run.get("pretrained") else "from scratch"
        rows.append(Row([
            data.run_id, status, f"{data.run.get('backbone')} ({pre})",
            f"{_setting_text(data.run)}; preset {data.run.get('preset')}",
            fmt(data.threshold),
            *[metric_cell(s, m) if s else DASH for m in slice_names],
            *[metric_cell(p, m) if p else DASH for m in patient_names],
            fmt(float(np.mean(vals)) if vals else None),
        ], muted=not data.finished))
    paper = [b for b in baselines if b["source"] == HOSEYNI and b["model"] == "vote"
             and b["scope"] == "slice" and b["split"] == "test"]
    paper.sort(key=lambda b: (b["backbone"] != "resnet50", b["backbone"],
                              b["setting"] != "tuned"))
    if paper:
        rows.append(Row([f"Reported by {PAPER_NAME} (voting, slice level)"], group=True))
        for b in paper:
            rows.append(Row([
                PAPER_NAME, "published", str(b["backbone"]),
                "tuned (augment 3.3×, ICH weight 4)" if b["setting"] == "tuned"
                else "without tuning", DASH, *[fmt(b.get(m)) for m in slice_names],
                *[DASH] * len(patient_names), DASH,
            ], muted=True, strong=b["setting"] == "tuned" and b["backbone"] == "resnet50"))
    return TableData(
        id=table_id, title="Runs compared: voting on the test set (Table II of the paper)",
        columns=columns, rows=rows, numeric_from=4,
        caption="Slice-level metrics with 95% CIs (patient bootstrap); patient level with "
                "the run's patient rule. Mean val F1: mean over folds of the validation F1 "
                "at each fold's threshold. A run that did not finish has no vote.")


def _compiled_text(folds: list[dict[str, Any]]) -> str:
    """Which folds trained through torch.compile: a resumed run may mix both."""
    compiled = [int(f["fold"]) for f in folds if f.get("compiled")]
    if not folds:
        return DASH
    if not compiled:
        return "no"
    if len(compiled) == len(folds):
        return "yes, every fold"
    return "folds " + ", ".join(map(str, compiled)) + " only"


def provenance_table(data: RunData, table_id: str) -> TableData:
    """Configuration and provenance: what ran, on what, with which code and libraries."""
    run = data.run
    cfg = data.config
    versions = run.get("versions") or {}
    pretrained = "yes" if run.get("pretrained") else "no"
    if run.get("pretrained_source"):
        pretrained += f" ({run['pretrained_source']})"
    status = run["status"] if data.finished else f"{run['status'].upper()} — NOT finished"
    if run.get("error"):
        status += f": {run['error']}"
    items = [
        ("Run", data.run_id),
        ("Status", status),
        ("Dataset", f"{run.get('dataset')}"),
        ("Dataset hash", str(run.get("dataset_hash"))),
        ("Excluded patients", ", ".join(str(p) for p in cfg.get("exclude", [])) or "none"),
        ("Patients", f"{len(data.test_patients)} test; "
                     f"{_pool_size(data)} in {len(data.fold_patients)} cross-validation folds"),
        ("Backbone", str(run.get("backbone"))),
        ("Pretrained", pretrained),
        ("Imbalance strategies", _setting_text(run)),
        ("Ensemble / patient rule", f"{run.get('ensemble') or DASH} / "
                                    f"{run.get('patient_rule') or DASH}"),
        ("Training", f"at most {cfg.get('epochs')} epoch(s), batch {cfg.get('batch_size')}, "
                     f"lr {cfg.get('lr')}, patience {cfg.get('patience')}, "
                     f"{cfg.get('image_size')} px, windows {', '.join(cfg.get('windows', []))}"),
        ("Voting threshold", fmt(data.threshold)),
        ("Preset", str(run.get("preset"))),
        ("Seed", str(run.get("seed"))),
        ("Device", str(run.get("device"))),
        ("torch.compile", _compiled_text(data.folds)),
        ("Started / finished", f"{_time(run.get('started_at'))} / "
                               f"{_time(run.get('finished_at'))}"),
        ("Wall time", fmt_wall(run.get("wall_s"))),
        ("Config hash / split hash", f"{run.get('config_hash')} / {run.get('split_hash')}"),
        ("Git commit", str(run.get("git_sha") or "unknown")),
        ("Grid", str(run.get("grid_id") or DASH)),
        ("Versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or DASH),
        ("Configuration", json.dumps(cfg, sort_keys=True)),
    ]
    return TableData(id=table_id, title="Configuration and provenance", columns=["", ""],
                     rows=[Row([k, v], strong=k == "Status" and not data.finished)
                           for k, v in items], numeric_from=99)


def _pool_size(data: RunData) -> int:
    pool = set()
    for parts in data.fold_patients.values():
        pool.update(parts["train"])
        pool.update(parts["val"])
    return len(pool)


def _time(value: Any) -> str:
    return DASH if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")
