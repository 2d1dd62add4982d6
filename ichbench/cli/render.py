"""Tables in the terminal: the view-model (ichbench.views) rendered with rich.

Shared by `ichbench show`, `compare`, `runs`, `sql` and the end-of-run printout of
`ichbench run`, so a result looks the same wherever it is printed.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ichbench.views import RunData, TableData, load_run_data
from ichbench.views.metrics import run_tables
from ichbench.views.paired import paired_table
from ichbench.views.provenance import provenance_table

if TYPE_CHECKING:
    from ichbench.store import Store

STATUS_COLOURS = {"finished": "green", "running": "cyan", "failed": "red", "interrupted": "yellow"}


def rich_table(data: TableData) -> RenderableType:
    """A table with its short title and headers; field / value tables as a grid."""
    if data.key_value:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        for row in data.rows:
            grid.add_row(row.cells[0], Text(row.cells[1]))
        return grid
    table = Table(
        title=data.short_title or data.title or None,
        title_justify="left",
        caption=data.note or None,
    )
    for i, name in enumerate(data.headers(short=True)):
        table.add_column(
            name, justify="right" if i >= data.numeric_from else "left", no_wrap=i == 0
        )
    width = len(data.columns)
    for row in data.rows:
        if row.group:
            table.add_row(Text(row.cells[0], style="italic"), *[""] * (width - 1))
            continue
        cells: list[Any] = [Text(c) for c in row.cells]
        if data.status_column is not None:
            status = row.cells[data.status_column]
            cells[data.status_column] = Text(status, style=STATUS_COLOURS.get(status, ""))
        style = "bold" if row.strong else "dim" if row.muted else None
        table.add_row(*cells, style=style)
    return table


def print_run_tables(console: Console, store: Store, run_id: str) -> None:
    """Slice-level (per fold + vote, test set, with 95% CIs) and patient-level tables of
    one run, each with the reported numbers beside it."""
    _print_tables(console, load_run_data(store, run_id, results=False), store.baselines())


def print_run(console: Console, store: Store, run_id: str) -> None:
    """`ichbench show`: provenance, then the run's tables beside the paper's."""
    data = load_run_data(store, run_id, results=False)
    console.print(rich_table(provenance_table(data)))
    console.print()
    _print_tables(console, data, store.baselines())


def _print_tables(console: Console, data: RunData, baselines: list[dict[str, Any]]) -> None:
    for scope in ("slice", "patient"):
        ours, reported = run_tables(data, baselines, scope)
        console.print(Columns([rich_table(ours), rich_table(reported)], padding=(0, 3)))
        console.print()


def print_repeats(console: Console, store: Store, run_ids: list[str]) -> None:
    """`ichbench run --repeats R`: each repeat's headline result and their mean ± sd."""
    from ichbench.views.metrics import repeats_table

    console.print(rich_table(repeats_table(store.summaries(run_ids))))


def print_paired(console: Console, paired: dict[str, Any]) -> None:
    """`ichbench compare A B`: the paired table of B - A, or the one line saying why the
    two runs cannot be paired."""
    console.print()
    if paired["note"]:
        console.print(paired["note"], highlight=False, soft_wrap=True)
    else:
        console.print(rich_table(paired_table(paired)))


def sql_table(
    columns: list[str],
    rows: list[tuple],
    width: int | None = None,
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
