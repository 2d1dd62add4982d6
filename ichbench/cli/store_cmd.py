"""`ichbench runs | show | compare | sql`: reading the run store.

Every command here only reads: a missing store is an error and is never created, an
older store is read as it is and never upgraded, and `sql` runs on a read-only,
sandboxed connection.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from ichbench import paths
from ichbench.cli import render
from ichbench.cli.common import (
    check_output_format,
    complete_run_ids,
    emit_csv,
    emit_json,
    err,
    out,
    table_csv,
)
from ichbench.cli.options import CsvOpt, DbOpt, JsonOpt
from ichbench.errors import UsageError
from ichbench.formatting import DASH, fmt_list
from ichbench.provenance import check_tags
from ichbench.store import Store
from ichbench.store.reads import SORTABLE, STATUSES
from ichbench.store.sql import run_query
from ichbench.views.evaluation import show_evaluations
from ichbench.views.metrics import (
    compare_table,
    literature_caveat,
    literature_table,
    runs_table,
)
from ichbench.views.model import TableData
from ichbench.views.paired import paired_result
from ichbench.views.provenance import config_diff, config_diff_table


def _open(db: Path | None) -> Store:
    return Store(db or paths.default_db(), create=False)


def _say_waiting(store: Store, run_id: str | None = None) -> None:
    """Results runs wrote to disk while the store was busy, not in it yet: said on
    stderr, so what a reader sees is never taken for the whole story."""
    from ichbench.store.journal import Journal

    journal = Journal(store.path)
    waiting = [journal.pending(run_id)] if run_id else journal.all_pending()
    for pending in (p for p in waiting if not p.empty):
        err.print(
            f"[yellow]Note:[/] run {pending.run_id}: {pending.describe()} waiting on disk to "
            "go into the store (`ichbench store sync`)",
            highlight=False,
            soft_wrap=True,
        )


def runs(
    status: Annotated[
        str | None,
        typer.Option(
            "--status", help="Only runs with this status: running, finished, failed, interrupted."
        ),
    ] = None,
    backbone: Annotated[
        str | None, typer.Option("--backbone", help="Only runs of this backbone.")
    ] = None,
    grid: Annotated[str | None, typer.Option("--grid", help="Only runs of this grid id.")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="Only runs with this tag; repeatable: every one of them."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset", help="Only runs whose dataset's name holds this text (any case)."
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help="Only runs with this strategy: a spec (augment:3.3, weight:ich,4) or a name "
            "(augment: any ratio).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only runs started then or later: an ISO date or date-time, UTC."
        ),
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option(
            "--sort",
            help="Order by this run_summary column, highest first (runs without it last): "
            + ", ".join(SORTABLE)
            + ". Default: newest first.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most this many runs.")
    ] = None,
    wide: Annotated[
        bool,
        typer.Option("--wide", help="Every column and whole run ids, however wide the table gets."),
    ] = False,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    db: DbOpt = None,
) -> None:
    """List runs, newest first, with their vote's test F1."""
    check_output_format(as_json, as_csv)
    if status is not None and status not in STATUSES:
        raise UsageError(f"--status {status!r}: expected one of {', '.join(STATUSES)}")
    if sort is not None and sort not in SORTABLE:
        raise UsageError(f"--sort {sort!r}: expected one of {', '.join(SORTABLE)}")
    tags = check_tags(tag or [])
    started = _since(since) if since is not None else None
    if strategy is not None and not strategy.strip():
        raise UsageError("--strategy '': expected a strategy spec or name, e.g. augment:3.3")
    store = _open(db)
    rows = store.list_runs(
        status=status,
        backbone=backbone,
        grid_id=grid,
        limit=limit,
        tags=tags,
        dataset=dataset,
        strategy=strategy,
        since=started,
        sort=sort,
    )
    _say_waiting(store)
    if as_json:
        emit_json(rows)
        return
    if as_csv:  # with no run, the header alone: a reader still sees every column
        emit_csv(rows, None if rows else run_query(store, "SELECT * FROM run_summary LIMIT 0")[0])
        if not rows:
            err.print("No runs match.")
        return
    if not rows:
        err.print("No runs match.")
        return
    given = (status, backbone, grid, limit, dataset, strategy, since)
    filtered = bool(tags) or any(v is not None for v in given)
    known = [r["run_id"] for r in store.list_runs()] if filtered else [r["run_id"] for r in rows]
    table = _with_labels(runs_table(rows, compact=not wide), rows)
    render.emit(out, render.rich_table(table, wide=wide, known_ids=known))


def _since(text: str) -> datetime:
    """`--since`: an ISO date (midnight) or date-time, in UTC unless it names its zone."""
    try:
        value = datetime.fromisoformat(text.strip().removesuffix("Z").removesuffix("z"))
    except ValueError:
        raise UsageError(
            f"--since {text!r}: expected an ISO date or date-time in UTC, e.g. 2026-01-31 "
            "or 2026-01-31T14:30"
        ) from None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def _with_labels(table: TableData, rows: list[dict[str, Any]]) -> TableData:
    """The runs' names and tags beside their ids, in columns that only appear when a run
    shown has them, so a store that nobody labels reads as before."""
    columns = [
        (header, cells)
        for header, cells in (
            ("Name", [r.get("name") or DASH for r in rows]),
            ("Tags", [fmt_list(r.get("tags")) if r.get("tags") else DASH for r in rows]),
        )
        if any(cell != DASH for cell in cells)
    ]
    for offset, (header, cells) in enumerate(columns, start=1):
        table.columns.insert(offset, header)
        if table.short_columns is not None:
            table.short_columns.insert(offset, header)
        for row, cell in zip(table.rows, cells):
            row.cells.insert(offset, cell)
    table.numeric_from += len(columns)
    if table.status_column is not None:
        table.status_column += len(columns)
    return table


def show(
    run_id: Annotated[
        str,
        typer.Argument(
            metavar="RUN",
            help="Run id, or a unique prefix or suffix of it.",
            autocompletion=complete_run_ids,
        ),
    ],
    wide: Annotated[
        bool,
        typer.Option("--wide", help="Each 95% CI in brackets beside its value, however wide."),
    ] = False,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    db: DbOpt = None,
) -> None:
    """One run: config, provenance, per-fold and vote metrics with 95% CIs at slice and
    patient level, beside the paper's numbers. `--csv` prints its metrics, a row per
    model, scope and split."""
    check_output_format(as_json, as_csv)
    store = _open(db)
    run = store.get_run(run_id)
    _say_waiting(store, run["run_id"])
    if as_json:
        emit_json(
            {
                "run": run,
                "folds": store.folds(run["run_id"], outer=None),
                "metrics": store.run_metrics(run["run_id"]),
                "outer_votes": store.outer_votes(run["run_id"]),
                "baselines": store.baselines(),
                "evaluations": store.evaluations(run["run_id"]),
            }
        )
        return
    if as_csv:
        emit_csv(store.run_metrics(run["run_id"]))
        return
    render.print_run(out, store, run["run_id"], wide)
    evaluations = show_evaluations(store, run["run_id"])  # external validation, if any
    if evaluations is not None:
        render.emit(out, render.rich_table(evaluations, wide=wide))


def compare(
    run_ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="RUN",
            help="Run ids, or unique prefixes or suffixes of them.",
            autocompletion=complete_run_ids,
        ),
    ] = None,
    grid: Annotated[
        str | None, typer.Option("--grid", help="Also every run of this grid id.")
    ] = None,
    wide: Annotated[
        bool,
        typer.Option("--wide", help="Every column and whole run ids, however wide the tables get."),
    ] = False,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    db: DbOpt = None,
) -> None:
    """Runs side by side (the vote's test metrics, slice and patient level, mean
    validation F1) with the literature's reported results. Two runs tested on the same
    patients also get B - A for every metric with a paired 95% CI, DeLong's test on the
    slice AUCs and McNemar's on the patient decisions."""
    check_output_format(as_json, as_csv)
    if not run_ids and not grid:
        raise UsageError("compare needs at least one RUN or --grid GRID")
    store = _open(db)
    if run_ids and len(run_ids) > 1:
        resolved = [store.resolve(r) for r in run_ids]
        for i, full in enumerate(resolved):
            if full in resolved[:i]:
                raise UsageError(
                    f"Run {full} is named twice: compare needs different runs "
                    f"('{run_ids[resolved.index(full)]}' and '{run_ids[i]}')"
                )
    rows = store.summaries(list(run_ids or []))
    if run_ids and len(run_ids) == 2 and not grid:
        _check_comparable(rows[0], rows[1])
    if grid:
        seen = {r["run_id"] for r in rows}
        in_grid = store.list_runs(grid_id=grid)
        if not in_grid:
            raise UsageError(f"No runs with grid id '{grid}' in {store.path}")
        rows += [r for r in reversed(in_grid) if r["run_id"] not in seen]
    baselines = store.baselines()
    reported = [b for b in baselines if b["model"] != "fold"]
    paired = paired_result(store, rows[0], rows[1]) if len(rows) == 2 else None
    for row in rows:
        row["comparable"] = store.comparable(row["run_id"])
    diff = config_diff({r["run_id"]: store.get_run(r["run_id"])["config"] for r in rows})
    if as_json:
        emit_json(
            {"runs": rows, "baselines": reported, "config_diff": diff}
            | ({"paired": paired} if paired is not None else {})
        )
        return
    if as_csv:
        emit_csv(rows)
        return
    known = [r["run_id"] for r in store.list_runs()]
    table = compare_table(rows, baselines, "compare", brief=True)
    render.emit(out, render.rich_table(table, wide=wide, known_ids=known))
    if len(rows) > 1:
        render.emit(out, render.rich_table(config_diff_table(diff), wide=wide, known_ids=known))
    if paired is not None:
        render.print_paired(out, paired, wide=wide)
    out.print()
    literature = literature_table(reported, compact=not wide)
    render.emit(out, render.rich_table(literature, wide=wide))
    caveats = [literature_caveat(row, row["comparable"]) for row in rows]
    render.print_lines(out, [c for c in caveats if c])


def _check_comparable(a: dict, b: dict) -> None:
    """`compare A B` is a paired comparison: both runs need a result, on the same data."""
    for run in (a, b):
        if run["status"] != "finished":
            raise UsageError(
                f"Run {run['run_id']} is {run['status']}: it has no result to compare "
                f"(finish it with `ichbench run --resume {run['run_id']}`)"
            )
    if a.get("dataset_hash") != b.get("dataset_hash"):
        raise UsageError(
            f"Runs {a['run_id']} ({a.get('dataset')}) and {b['run_id']} ({b.get('dataset')}) "
            "were made on different datasets: their results are not comparable"
        )


def sql(
    query: Annotated[str, typer.Argument(metavar="SQL", help="One SELECT statement.")],
    as_csv: CsvOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of objects.")] = False,
    db: DbOpt = None,
) -> None:
    """Run a read-only SQL query on the store (see docs/store.md for the schema). A
    mistake in the query exits 2 with DuckDB's hints; an empty result says "0 rows" (on
    stderr with --json or --csv, whose output stays valid)."""
    check_output_format(as_json, as_csv)
    columns, rows = run_query(_open(db), query)
    if not rows:
        console = err if as_json or as_csv else out
        console.print(
            f"0 rows (columns: {', '.join(columns)})", highlight=False, markup=False, soft_wrap=True
        )
    if as_json:
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:  # a JSON object holds a name once: one of the columns would be lost
            raise UsageError(
                f"--json: column {twice[0]!r} is named twice in the result; name each "
                "column once (AS), or use --csv"
            )
        emit_json([dict(zip(columns, row, strict=True)) for row in rows])
    elif as_csv:
        out.out(table_csv(columns, rows), end="", highlight=False)
    elif rows:
        out.print(render.sql_table(columns, rows, width=out.width))


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
    app.command("show")(show)
    app.command("compare")(compare)
    app.command("sql")(sql)
