"""Rich tables of stored results, with the literature's numbers beside them.

Shared by `ichbench show`, `ichbench compare`, `ichbench runs` and the runner's
end-of-run printout, so a result looks the same wherever it is printed. Tables follow
the paper's shapes: per-fold rows plus the vote (Table I, slice level; Table III,
patient level) and one row per configuration (Table II).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ichbench.formatting import DASH, fmt, fmt_wall  # noqa: F401  (re-exported)
from ichbench.records import METRIC_NAMES
from ichbench.store.baselines import baseline_label, paper_and_cited

if TYPE_CHECKING:
    from ichbench.store.store import Store

HEADERS = {"sensitivity": "Sens", "specificity": "Spec", "precision": "Prec", "f1": "F1",
           "accuracy": "Acc", "auc": "AUC"}
FIVE = METRIC_NAMES[:5]  # what the literature reports: no AUC


def fmt_time(value: datetime | None) -> str:
    return DASH if value is None else value.strftime("%Y-%m-%d %H:%M")


def fmt_list(values: Iterable[str] | None) -> str:
    items = list(values or [])
    return " ".join(items) if items else "none"


def to_json(value: Any) -> str:
    """JSON for `--json` outputs: timestamps as ISO 8601, anything else exotic as text."""
    def default(obj: Any) -> Any:
        if isinstance(obj, datetime):
            return obj.isoformat()
        if hasattr(obj, "tolist"):
            return obj.tolist()
        return str(obj)

    return json.dumps(value, indent=2, default=default)


# ---------------------------------------------------------------- run tables


def _metrics_table(title: str, rows: list[dict[str, Any]], caption: str | None) -> Table:
    table = Table(title=title, caption=caption, title_justify="left")
    table.add_column("Model", no_wrap=True)
    table.add_column("Thr", justify="right")
    for name in METRIC_NAMES:
        table.add_column(HEADERS[name], justify="right")
    table.add_column("n", justify="right")
    for row in rows:
        label = "vote" if row["model"] == "vote" else f"fold {row['fold']}"
        cells = [fmt(row[m], row[f"{m}_lo"], row[f"{m}_hi"]) for m in METRIC_NAMES]
        style = "bold" if row["model"] == "vote" else None
        table.add_row(label, fmt(row["threshold"]), *cells, str(row["n"]), style=style)
    if not rows:
        table.add_row("no results", *[DASH] * (len(METRIC_NAMES) + 2))
    return table


def _reported_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("Reported", no_wrap=True)
    for name in FIVE:
        table.add_column(HEADERS[name], justify="right")
    for row in rows:
        label = baseline_label(row, vote="paper vote", fold="paper fold {fold}")
        table.add_row(label, *[fmt(row[m]) for m in FIVE],
                      style="bold" if row["model"] == "vote" else None)
    return table


def reported_for(baselines: Sequence[dict[str, Any]], scope: str) -> list[dict[str, Any]]:
    """The paper's ResNet50 folds and vote at one scope, then the other groups' results."""
    paper, cited = paper_and_cited(baselines, scope)
    return paper + cited


def print_run_tables(console: Console, store: Store, run_id: str) -> None:
    """Slice-level (per fold + vote, test set, with 95% CIs) and patient-level tables of
    one run, each with the reported numbers beside it."""
    run = store.get_run(run_id)
    metrics = store.run_metrics(run["run_id"])
    baselines = store.baselines()
    caption = None
    if run["status"] != "finished":
        caption = f"run is {run['status']}: no vote yet"
    for scope, shape in (("slice", "Table I"), ("patient", "Table III")):
        rows = [m for m in metrics if m["scope"] == scope and m["split"] == "test"]
        ours = _metrics_table(f"{scope.title()} level, test set ({run['run_id']})", rows,
                              caption)
        reported = _reported_table(f"Hoseyni et al., {shape}", reported_for(baselines, scope))
        console.print(Columns([ours, reported], padding=(0, 3)))
        console.print()


def run_overview(run: dict[str, Any]) -> Table:
    """Config and provenance of one run as a key/value grid."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    versions = run.get("versions") or {}
    pretrained = "yes" if run.get("pretrained") else "no"
    if run.get("pretrained_source"):
        pretrained += f" ({run['pretrained_source']})"
    items = [
        ("Run", run["run_id"]),
        ("Status", run["status"] + (f": {run['error']}" if run.get("error") else "")),
        ("Started / finished", f"{fmt_time(run['started_at'])} / {fmt_time(run['finished_at'])}"),
        ("Wall time", fmt_wall(run.get("wall_s"))),
        ("Dataset", f"{run['dataset']} ({run['dataset_hash']})"),
        ("Backbone", str(run["backbone"])),
        ("Strategies", fmt_list(run.get("strategies"))),
        ("Ensemble / patient rule", f"{run.get('ensemble') or DASH} / "
                                    f"{run.get('patient_rule') or DASH}"),
        ("Voting threshold", fmt(run.get("threshold"))),
        ("Preset / device", f"{run['preset']} / {run['device']}"),
        ("Pretrained", pretrained),
        ("Seed", str(run["seed"])),
        ("Config hash", str(run["config_hash"])),
        ("Split hash", str(run["split_hash"])),
        ("Git", str(run.get("git_sha") or DASH)),
        ("Grid", str(run.get("grid_id") or DASH)),
        ("Versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or DASH),
        ("Config", json.dumps(run.get("config"), sort_keys=True)),
    ]
    for key, value in items:
        grid.add_row(key, Text(value))
    return grid


# ---------------------------------------------------------------- run lists


def runs_table(rows: list[dict[str, Any]]) -> Table:
    """`ichbench runs`: one line per run, newest first."""
    table = Table(title_justify="left")
    for name, justify in (("Run", "left"), ("Status", "left"), ("Started", "left"),
                          ("Backbone", "left"), ("Strategies", "left"), ("Preset", "left"),
                          ("Folds", "right"), ("Thr", "right"), ("Slice F1", "right"),
                          ("Patient F1", "right"), ("Val F1", "right"), ("Wall", "right")):
        table.add_column(name, justify=justify, no_wrap=name == "Run")
    for r in rows:
        table.add_row(r["run_id"], _status(r["status"]), fmt_time(r["started_at"]),
                      str(r["backbone"]), fmt_list(r["strategies"]), str(r["preset"]),
                      str(r["folds_finished"]), fmt(r["threshold"]), fmt(r["slice_f1"]),
                      fmt(r["patient_f1"]), fmt(r["mean_val_f1"]), fmt_wall(r["wall_s"]))
    return table


def compare_table(rows: list[dict[str, Any]]) -> Table:
    """`ichbench compare`: Table II's shape, the vote's test metrics per run."""
    table = Table(title="Vote, test set", title_justify="left")
    table.add_column("Run", no_wrap=True)
    table.add_column("Status")
    table.add_column("Backbone")
    table.add_column("Strategies")
    for name in METRIC_NAMES:
        table.add_column(f"Slice {HEADERS[name]}", justify="right")
    for name in ("sensitivity", "specificity", "f1"):
        table.add_column(f"Patient {HEADERS[name]}", justify="right")
    table.add_column("Val F1", justify="right")
    for r in rows:
        table.add_row(r["run_id"], _status(r["status"]), str(r["backbone"]),
                      fmt_list(r["strategies"]),
                      *[fmt(r[f"slice_{m}"]) for m in METRIC_NAMES],
                      *[fmt(r[f"patient_{m}"]) for m in ("sensitivity", "specificity", "f1")],
                      fmt(r["mean_val_f1"]))
    return table


def baselines_table(rows: list[dict[str, Any]], title: str = "Reported in the literature",
                    ) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("Source", "Model", "Backbone", "Setting", "Scope"):
        table.add_column(name)
    for name in FIVE:
        table.add_column(HEADERS[name], justify="right")
    for r in rows:
        model = r["model"] if r["fold"] is None else f"fold {r['fold']}"
        table.add_row(r["source"], model, str(r["backbone"]), str(r["setting"]), r["scope"],
                      *[fmt(r[m]) for m in FIVE])
    return table


def sql_table(columns: list[str], rows: list[tuple], width: int | None = None,
              ) -> RenderableType:
    """Query results as a table, or one `column  value` block per row when the table
    would not fit in `width` columns (a wide `SELECT *` stays readable)."""
    table = Table()
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*[_cell(v) for v in row])
    if width is None or _natural_width(table) <= width:
        return table
    blocks: list[RenderableType] = []
    for i, row in enumerate(rows, start=1):
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for name, value in zip(columns, row, strict=True):
            grid.add_row(name, _cell(value))
        blocks += [Text(f"-- row {i} --", style="dim"), grid]
    return Group(*blocks) if blocks else Text(f"(no rows) columns: {', '.join(columns)}")


def _natural_width(table: Table) -> int:
    console = Console(width=100_000)
    return Measurement.get(console, console.options, table).maximum


def _cell(value: Any) -> Text:
    """Query results are shown literally: brackets in values are not markup."""
    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, float):
        return Text(f"{value:.6g}")
    if isinstance(value, datetime):
        return Text(value.isoformat(sep=" ", timespec="seconds"))
    return Text(str(value))


def _status(status: str) -> str:
    colour = {"finished": "green", "running": "cyan", "failed": "red",
              "interrupted": "yellow"}.get(status, "white")
    return f"[{colour}]{status}[/]"
