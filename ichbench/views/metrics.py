"""Result tables in the paper's shapes: per fold and voting (Table I at slice level,
Table III at patient level), runs side by side (Table II), and run lists.

The run's own rows and the literature's share columns so that "did I beat the paper?"
is read straight down a column.
"""

from __future__ import annotations

from typing import Any

from ichbench.formatting import DASH, TIMESTAMPED_ID, fmt, fmt_list, fmt_time, fmt_wall
from ichbench.records import METRIC_NAMES
from ichbench.store.baselines import HOSEYNI, baseline_label, paper_and_cited
from ichbench.views.model import PAGE, TERMINAL, Row, TableData, Wording
from ichbench.views.run_data import RunData

HEADERS = {
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "precision": "Precision",
    "f1": "F1",
    "accuracy": "Accuracy",
    "auc": "AUC",
}
SHORT = {
    "sensitivity": "Sens",
    "specificity": "Spec",
    "precision": "Prec",
    "f1": "F1",
    "accuracy": "Acc",
    "auc": "AUC",
}
FIVE = METRIC_NAMES[:5]  # what the literature reports: no AUC
PATIENT_COMPARED = ("sensitivity", "specificity", "f1")
PAPER_NAME = "Hoseyni et al."
SHAPES = {"slice": "Table I", "patient": "Table III"}


DEGENERATE = "*"
DEGENERATE_NOTE = (
    "* A zero-width interval: (nearly) every bootstrap resample gave the same value, "
    "so there were too few patients, or too few of one class, for a CI."
)


def degenerate_ci(row: dict[str, Any], name: str) -> bool:
    """An interval of zero width: at least 95% of the resamples gave one value. It says
    nothing about the uncertainty, only that the test set was too small to show any."""
    lo, hi = row.get(f"{name}_lo"), row.get(f"{name}_hi")
    return lo is not None and hi is not None and lo == hi


def metric_cell(row: dict[str, Any], name: str, mark: bool = False) -> str:
    """`0.91 [0.85–0.95]`; with `mark`, a zero-width interval is flagged (`DEGENERATE`)
    for a table that explains it (`DEGENERATE_NOTE`)."""
    text = fmt(row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi"))
    if mark and row.get(name) is not None and degenerate_ci(row, name):
        text += DEGENERATE
    return text


def _marked(rows: list[Row]) -> bool:
    return any(c.endswith(DEGENERATE) for r in rows if not r.group for c in r.cells)


def _with_note(text: str, rows: list[Row]) -> str:
    """`text` followed by the footnote on zero-width intervals where a cell is flagged."""
    if not _marked(rows):
        return text
    return f"{text} {DEGENERATE_NOTE}" if text else DEGENERATE_NOTE


def status_note(data: RunData) -> str:
    """A warning for a run that did not finish; empty for a finished one."""
    if data.finished:
        return ""
    done = sum(1 for f in data.folds if f["status"] == "finished")
    total = len(data.fold_patients) or len(data.folds)
    text = (
        f"Run {data.run_id} is {data.status.upper()}, not finished: {done} of {total} "
        "folds were recorded and there is no vote. Its numbers are partial."
    )
    if data.run.get("error"):
        text += f" Error: {data.run['error']}"
    return text


# ---------------------------------------------------------------- per fold and voting


def _metric_columns(short: bool) -> list[str]:
    names = SHORT if short else HEADERS
    return ["Model", "Thr" if short else "Threshold", *[names[m] for m in METRIC_NAMES], "n"]


def _outer_rows(data: RunData, scope: str, wording: Wording) -> list[Row]:
    """A run with outer folds: the pooled result first (every patient tested once), then
    each outer fold's vote at its own threshold, and their mean ± sd."""
    rows = []
    pooled = data.metric("vote", scope, "test")
    if pooled is not None:
        rows.append(
            Row(
                [
                    wording.pooled,
                    DASH,
                    *[metric_cell(pooled, n, mark=True) for n in METRIC_NAMES],
                    str(pooled["n"]),
                ],
                strong=True,
            )
        )
    per_outer = data.outer_metrics(scope)
    for m in per_outer:
        rows.append(
            Row(
                [
                    wording.outer.format(outer=m["outer_fold"]),
                    fmt(m["threshold"]),
                    *[metric_cell(m, n, mark=True) for n in METRIC_NAMES],
                    str(m["n"]),
                ]
            )
        )
    if len(per_outer) > 1:
        rows.append(
            Row(
                [
                    wording.spread,
                    mean_sd([m["threshold"] for m in per_outer]),
                    *[mean_sd([m[n] for m in per_outer]) for n in METRIC_NAMES],
                    DASH,
                ],
                muted=True,
            )
        )
    if not rows:
        blank = [DASH] * len(METRIC_NAMES)
        rows.append(Row([wording.pooled, DASH, *blank, f"none: run {data.status}"], muted=True))
    return rows


def val_f1_cell(summary: dict[str, Any]) -> str:
    """A `run_summary` row's mean validation F1 over folds ± its sd (where known)."""
    mean, sd = summary.get("mean_val_f1"), summary.get("sd_val_f1")
    if mean is None or sd is None:
        return fmt(mean)
    return f"{mean:.2f} ± {sd:.2f}"


def mean_sd(values: list[float | None]) -> str:
    """`0.71 ± 0.08` over the defined values (sample sd); a dash when none is."""
    import statistics

    defined = [v for v in values if v is not None and v == v]
    if not defined:
        return DASH
    sd = statistics.stdev(defined) if len(defined) > 1 else 0.0
    return f"{statistics.fmean(defined):.2f} ± {sd:.2f}"


def _run_rows(data: RunData, scope: str, wording: Wording, placeholders: bool = True) -> list[Row]:
    """Each fold of the split at its own threshold, then the vote. `placeholders`: a
    row that says so for a fold not recorded and for a missing vote (a terminal leaves
    them out and says "no vote yet" under the table instead). A run with outer folds
    shows its outer folds' votes and their pooled result instead."""
    if data.outer_folds > 1:
        return _outer_rows(data, scope, wording)
    rows = []
    blank = [DASH] * len(METRIC_NAMES)
    for fold in data.fold_indices:
        label = wording.fold.format(fold=fold)
        m = data.metric("fold", scope, "test", fold)
        if m is None:
            if placeholders:
                rows.append(Row([label, DASH, *blank, "not recorded"], muted=True))
            continue
        rows.append(
            Row(
                [
                    label,
                    fmt(m["threshold"]),
                    *[metric_cell(m, n, mark=True) for n in METRIC_NAMES],
                    str(m["n"]),
                ]
            )
        )
    vote = data.metric("vote", scope, "test")
    if vote is not None:
        rows.append(
            Row(
                [
                    wording.vote,
                    fmt(vote["threshold"]),
                    *[metric_cell(vote, n, mark=True) for n in METRIC_NAMES],
                    str(vote["n"]),
                ],
                strong=True,
            )
        )
    elif placeholders:
        rows.append(Row([wording.vote, DASH, *blank, f"none: run {data.status}"], muted=True))
    return rows


def _caption(data: RunData, scope: str) -> str:
    ci = (
        "patient-level bootstrap"
        if scope == "slice"
        else "Wilson intervals for proportions, bootstrap for F1 and AUC"
    )
    unit = "slices" if scope == "slice" else "patients"
    if data.outer_folds > 1:
        return (
            f"Nested cross-validation, {data.outer_folds} outer folds of patients: each outer "
            "fold's test patients were scored by the vote of fold models that never saw "
            "them, cut at that outer fold's own voting threshold; pooled = all of them "
            f"together, every patient once. 95% CIs in brackets ({ci}); mean ± sd over "
            f"the outer folds. n = test {unit}."
        )
    caption = (
        f"Each fold's model at its own validation threshold; the vote combines the "
        f"fold models ({_combination(data)}) at the voting threshold"
        + (f" ({fmt(data.threshold)})" if data.threshold is not None else "")
        + f". 95% CIs in brackets ({ci}). n = test {unit}."
    )
    if scope == "patient":
        caption += (
            f" Patient rule: {data.run.get('patient_rule') or 'any'} "
            "(the paper's: positive if any slice is)."
        )
    return caption


def _terminal_note(data: RunData) -> str:
    return "" if data.finished else f"run is {data.status}: no vote yet"


def literature_caveat(run: dict[str, Any], comparable: bool | None) -> str:
    """One line when a run's numbers sit beside the literature's without being like for
    like (the store's `vote_vs_baselines.comparable`); empty when they are, or unknown."""
    if comparable is not False:
        return ""
    return (
        f"Not like for like: run {run['run_id']} is {run.get('backbone')} "
        f"({run.get('preset')} preset) on {run.get('dataset')}; the reported numbers are "
        "ImageNet ResNet50s on the PhysioNet CT-ICH scans, context rather than a result "
        "to beat or miss."
    )


def _notes(data: RunData) -> str:
    return " ".join(
        n for n in (_terminal_note(data), literature_caveat(data.run, data.comparable)) if n
    )


def metrics_table(
    data: RunData, baselines: list[dict[str, Any]], scope: str, table_id: str
) -> TableData:
    """Table I (slice level) or Table III (patient level) as a page shows it: the folds
    and the vote on the test set with 95% CIs, and the literature below in the same
    columns."""
    title = (
        f"{scope.title()}-level results on the test set, per fold and voting "
        f"({SHAPES[scope]} of the paper)"
    )
    if not data.finished:
        title += f" — run {data.status.upper()}, partial"
    rows = _run_rows(data, scope, PAGE) + _literature_rows(baselines, scope)
    return TableData(
        id=table_id,
        title=title,
        columns=_metric_columns(False),
        rows=rows,
        caption=_with_note(_caption(data, scope), rows),
        short_columns=_metric_columns(True),
        note=_with_note(_notes(data), rows),
    )


def run_tables(
    data: RunData,
    baselines: list[dict[str, Any]],
    scope: str,
) -> tuple[TableData, TableData]:
    """The same rows as `metrics_table` as a terminal shows them: the run's table and,
    beside it, the literature's in its own narrower table."""
    rows = _run_rows(data, scope, TERMINAL, placeholders=False) or [
        Row(["no results", *[DASH] * (len(METRIC_NAMES) + 2)], muted=True)
    ]
    ours = TableData(
        id=f"table-{scope}",
        title=f"{scope.title()} level, test set ({data.run_id})",
        columns=_metric_columns(True),
        rows=rows,
        caption=_with_note(_caption(data, scope), rows),
        note=_with_note(_notes(data), rows),
    )
    paper, cited = paper_and_cited(baselines, scope)
    reported = TableData(
        id=f"reported-{scope}",
        title=f"{PAPER_NAME}, {SHAPES[scope]}",
        columns=["Reported", *[SHORT[m] for m in FIVE]],
        rows=[
            Row(
                [
                    baseline_label(b, vote=TERMINAL.paper_vote, fold=TERMINAL.paper_fold),
                    *[fmt(b.get(m)) for m in FIVE],
                ],
                strong=b["model"] == "vote",
            )
            for b in paper + cited
        ],
    )
    return ours, reported


def _literature_rows(baselines: list[dict[str, Any]], scope: str) -> list[Row]:
    """The paper's tuned ResNet50 folds and vote at one scope, then other groups'."""
    paper, others = paper_and_cited(baselines, scope)

    def cells(b: dict[str, Any]) -> list[str]:
        label = baseline_label(b, vote=PAGE.paper_vote, fold=PAGE.paper_fold)
        return [label, DASH, *[fmt(b.get(n)) for n in METRIC_NAMES], DASH]

    rows = []
    if paper:
        rows.append(
            Row([f"Reported by {PAPER_NAME} (ResNet50, tuned; no CIs published)"], group=True)
        )
        rows += [Row(cells(b), muted=True, strong=b["model"] == "vote") for b in paper]
    if others:
        rows.append(Row([f"Other published results (as cited by {PAPER_NAME})"], group=True))
        rows += [Row(cells(b), muted=True) for b in others]
    return rows


# ---------------------------------------------------------------- runs side by side


def strategies_text(run: dict[str, Any]) -> str:
    strategies = list(run.get("strategies") or [])
    return ", ".join(strategies) if strategies else "none"


def compare_table(
    runs: list[dict[str, Any]],
    baselines: list[dict[str, Any]],
    table_id: str,
    votes: dict[str, list[dict[str, Any]]] | None = None,
    brief: bool = False,
) -> TableData:
    """Table II's shape: one row per run (`run_summary` rows) with the vote's test
    metrics, then the paper's backbones with and without the tuned configuration.
    `votes` (run id -> that run's `metrics` rows) adds the 95% CIs. `brief` is the
    terminal's narrower form: no threshold column and the literature left to a table of
    its own (`literature_table`)."""
    slice_cols = [f"Slice {SHORT[m]}" for m in METRIC_NAMES]
    patient_cols = [f"Patient {SHORT[m]}" for m in PATIENT_COMPARED]
    if brief:
        columns = ["Run", "Status", "Backbone", "Strategies", *slice_cols, *patient_cols, "Val F1"]
    else:
        columns = [
            "Run",
            "Status",
            "Backbone",
            "Configuration",
            "Threshold",
            *slice_cols,
            *patient_cols,
            "Mean val F1",
        ]
    rows = [_compare_row(r, (votes or {}).get(r["run_id"], []), brief) for r in runs]
    if not brief:
        rows += _paper_backbone_rows(baselines)
    return TableData(
        id=table_id,
        title="Vote, test set"
        if brief
        else "Runs compared: voting on the test set (Table II of the paper)",
        columns=columns,
        rows=rows,
        numeric_from=4,
        status_column=1,
        caption=_with_note(
            "Slice-level metrics with 95% CIs (patient bootstrap); patient level with "
            "the run's patient rule. Mean val F1: mean ± sd over folds (of every outer fold) "
            "of the validation F1 at each fold's threshold. A run that did not finish has no "
            "vote.",
            rows,
        ),
    )


def _compare_row(r: dict[str, Any], metrics: list[dict[str, Any]], brief: bool) -> Row:
    finished = r["status"] == "finished"
    vote = {m["scope"]: m for m in metrics if m["model"] == "vote" and m["split"] == "test"}

    def cell(scope: str, name: str) -> str:
        if scope in vote and finished:
            return metric_cell(vote[scope], name, mark=True)
        return fmt(r.get(f"{scope}_{name}"))

    values = [
        *[cell("slice", m) for m in METRIC_NAMES],
        *[cell("patient", m) for m in PATIENT_COMPARED],
        val_f1_cell(r),
    ]
    if brief:
        return Row(
            [r["run_id"], r["status"], str(r["backbone"]), fmt_list(r["strategies"]), *values]
        )
    status = r["status"] if finished else f"{r['status'].upper()} (partial)"
    pre = "pretrained" if r.get("pretrained") else "from scratch"
    return Row(
        [
            r["run_id"],
            status,
            f"{r.get('backbone')} ({pre})",
            f"{strategies_text(r)}; preset {r.get('preset')}",
            fmt(r.get("threshold")),
            *values,
        ],
        muted=not finished,
    )


def _paper_backbone_rows(baselines: list[dict[str, Any]]) -> list[Row]:
    paper = [
        b
        for b in baselines
        if b["source"] == HOSEYNI
        and b["model"] == "vote"
        and b["scope"] == "slice"
        and b["split"] == "test"
    ]
    paper.sort(key=lambda b: (b["backbone"] != "resnet50", b["backbone"], b["setting"] != "tuned"))
    if not paper:
        return []
    rows = [Row([f"Reported by {PAPER_NAME} (voting, slice level)"], group=True)]
    for b in paper:
        rows.append(
            Row(
                [
                    PAPER_NAME,
                    "published",
                    str(b["backbone"]),
                    "tuned (augment 3.3×, ICH weight 4)"
                    if b["setting"] == "tuned"
                    else "without tuning",
                    DASH,
                    *[fmt(b.get(m)) for m in METRIC_NAMES],
                    *[DASH] * len(PATIENT_COMPARED),
                    DASH,
                ],
                muted=True,
                strong=b["setting"] == "tuned" and b["backbone"] == "resnet50",
            )
        )
    return rows


def literature_table(
    baselines: list[dict[str, Any]],
    title: str = "Reported in the literature",
    compact: bool = False,
) -> TableData:
    """Every given literature row with its source, model, backbone and setting; `compact`
    says those four in one column that wraps at its spaces, after the scope."""
    rows = []
    for b in baselines:
        model = b["model"] if b["fold"] is None else f"fold {b['fold']}"
        names = [b["source"], model, str(b["backbone"]), str(b["setting"]), b["scope"]]
        if compact:  # the scope first: the one short name a row can be told by
            names = [b["scope"], f"{names[0]} {names[1]} {names[2]} ({names[3]})"]
        rows.append(Row([*names, *[fmt(b.get(m)) for m in FIVE]]))
    named = (
        ["Scope", "Reported"] if compact else ["Source", "Model", "Backbone", "Setting", "Scope"]
    )
    return TableData(
        id="literature",
        title=title,
        columns=[*named, *[SHORT[m] for m in FIVE]],
        rows=rows,
        numeric_from=len(named),
    )


REPEATED = (
    ("slice_f1", "Slice F1"),
    ("slice_auc", "Slice AUC"),
    ("patient_sensitivity", "Patient Sens"),
    ("patient_specificity", "Patient Spec"),
    ("patient_f1", "Patient F1"),
)


def repeats_table(summaries: list[dict[str, Any]]) -> TableData:
    """One configuration repeated with other seeds: each repeat's headline test result
    (`run_summary` rows), then their mean ± sd, the spread a single run hides."""
    rows = [
        Row([r["run_id"], str(r["seed"]), *[fmt(r.get(k)) for k, _ in REPEATED]]) for r in summaries
    ]
    rows.append(
        Row(
            ["mean ± sd", DASH, *[mean_sd([r.get(k) for r in summaries]) for k, _ in REPEATED]],
            strong=True,
        )
    )
    return TableData(
        id="repeats",
        title=f"{len(summaries)} repeats, test set (the vote; pooled over outer folds if any)",
        columns=["Run", "Seed", *[label for _, label in REPEATED]],
        rows=rows,
        numeric_from=2,
        caption="Each repeat splits the patients and initialises the networks with its own "
        "seed; sd is the sample standard deviation over the repeats.",
    )


def runs_table(summaries: list[dict[str, Any]], compact: bool = False) -> TableData:
    """`ichbench runs`: one line per run (`run_summary` rows), newest first. `compact`
    (a terminal's default) leaves out the start time where every run id begins with it
    and writes the wall time as one word, so that no cell has to wrap."""
    timed = not (compact and all(TIMESTAMPED_ID.fullmatch(r["run_id"]) for r in summaries))
    rows = [
        Row(
            [
                r["run_id"],
                r["status"],
                *([fmt_time(r["started_at"])] if timed else []),
                str(r["backbone"]),
                fmt_list(r["strategies"]),
                str(r["preset"]),
                str(r["folds_finished"]),
                fmt(r["threshold"]),
                fmt(r["slice_f1"]),
                fmt(r["patient_f1"]),
                val_f1_cell(r),
                fmt_wall(r["wall_s"], short=compact),
            ]
        )
        for r in summaries
    ]
    return TableData(
        id="runs",
        title="",
        rows=rows,
        numeric_from=6 if timed else 5,
        status_column=1,
        columns=[
            "Run",
            "Status",
            *(["Started"] if timed else []),
            "Backbone",
            "Strategies",
            "Preset",
            "Folds",
            "Thr",
            "Slice F1",
            "Patient F1",
            "Val F1",
            "Wall",
        ],
    )


def _combination(data) -> str:
    """How the vote combined the fold models: the ensemble rule, or the second stage that
    replaces it."""
    stage2 = (data.config or {}).get("stage2")
    if stage2 not in (None, "none"):
        return f"a second-stage {stage2} over each scan's slice embeddings, mean over folds"
    return str(data.run.get("ensemble") or "mean")
