"""Tables in the terminal: the view-model (ichbench.views) rendered with rich.

Shared by `ichbench show`, `compare`, `runs`, `sql`, the grid's ranking and the
end-of-run printout of `ichbench run`, so a result looks the same wherever it is printed.

A table is compact unless `--wide` asks for everything: run ids by a prefix the CLI
takes back, columns that hold one value in every row said once under the table, and,
when the width is tight, each 95% CI on a second line under its value, then the table
cut into parts that repeat the key column. Nothing is ever cut short with `…`: a value
that is shown at all is shown whole. Lines carry no trailing spaces, so `ichbench runs >
file` or `| less` reads as it does on the screen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich import box
from rich.cells import cell_len
from rich.columns import Columns
from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.measure import Measurement
from rich.segment import Segment, Segments
from rich.table import Table
from rich.text import Text

from ichbench.formatting import short_run_ids
from ichbench.views import RunData, TableData, load_run_data
from ichbench.views.metrics import run_tables
from ichbench.views.paired import paired_table
from ichbench.views.provenance import provenance_table

if TYPE_CHECKING:
    from ichbench.store import Store

STATUS_COLOURS = {"finished": "green", "running": "cyan", "failed": "red", "interrupted": "yellow"}
GAP = 2  # spaces between the columns of a compact table (it has no vertical rules)

# `0.91 [0.85–0.95]` (a metric) and `+0.012 [-0.020, +0.041]` (a paired difference)
CI = re.compile(
    r"(?P<v>[+-]?\d+\.\d+) \[(?P<lo>[+-]?\d+\.\d+)(?P<sep>–|, )(?P<hi>[+-]?\d+\.\d+)\]"
    r"(?P<mark>\*?)"  # a degenerate interval's mark
)
SD = re.compile(r"(?P<v>[+-]?\d+\.\d+) ± (?P<sd>\d+\.\d+)")  # mean ± sd


def emit(console: Console, *renderables: RenderableType) -> None:
    """Print without trailing spaces: rich pads every line of a table, a caption or a set
    of columns to the full width, which a file, a pager or `diff` shows as noise."""
    for renderable in renderables:
        segments: list[Segment] = []
        for line in console.render_lines(renderable, console.options, pad=False):
            segments += _rstrip(line)
            segments.append(Segment.line())
        console.print(Segments(segments), end="", crop=False)


def _rstrip(line: list[Segment]) -> list[Segment]:
    line = list(line)
    while line and not line[-1].control and not line[-1].text.rstrip():
        line.pop()
    if line and not line[-1].control:
        last = line[-1]
        line[-1] = Segment(last.text.rstrip(), last.style, last.control)
    return line


def rich_table(
    data: TableData,
    wide: bool = False,
    known_ids: Collection[str] = (),
    whole_ids: str = "--wide shows them whole",
) -> RenderableType:
    """A table with its short title and headers; field / value tables as a grid. Compact
    unless `wide`; `known_ids` are every run id in the store, so that a run id in a cell
    is shortened only as far as it stays unique, and `whole_ids` says how to see them
    whole."""
    if data.key_value:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")  # a hash or a path folds rather than being cut
        for row in data.rows:
            grid.add_row(row.cells[0], Text(row.cells[1]))
        return grid
    return _boxed(data) if wide else Compact(data, known_ids, whole_ids)


def _boxed(data: TableData) -> RenderableType:
    """Every column as it is, in a box: `--wide`."""
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


# ---------------------------------------------------------------- the compact table


@dataclass
class _Column:
    index: int  # in the TableData
    header: str
    cells: list[str]  # one per body row
    numeric: bool
    key: bool  # the row's name: never wrapped, repeated in every part of a split table
    group: str = ""  # the first word its header shares with its neighbours ("Slice")

    def shown(self, level: int) -> list[str]:
        return [_cell_at(c, level) for c in self.cells]

    @property
    def wraps(self) -> bool:
        """Text wraps at spaces; numbers, ids and keys stay on their line."""
        return not (self.numeric or self.key)


def _cell_at(cell: str, level: int) -> str:
    """Level 0: as given. 1: a CI or an sd on a second line. 2: as 1 with the leading
    zeros of the bounds dropped (`.60–.80`): every metric lies in [0, 1]."""
    if level == 0:
        return cell
    if m := CI.fullmatch(cell):
        lo, hi = m["lo"], m["hi"]
        if level >= 2:
            lo, hi = _no_zero(lo), _no_zero(hi)
        return f"{m['v']}\n{lo}{m['sep']}{hi}{m['mark']}"
    if m := SD.fullmatch(cell):
        return f"{m['v']}\n±{m['sd']}"
    return cell


def _no_zero(number: str) -> str:
    return re.sub(r"^([+-]?)0\.", r"\1.", number)


def _words(text: str) -> list[str]:
    return text.split() or [""]


def _fill(text: str, width: int) -> str:
    """A header wrapped at its spaces to `width`, as explicit lines (its own line breaks
    kept)."""
    lines: list[str] = []
    for given in text.split("\n"):
        start = len(lines)
        for word in _words(given):
            if len(lines) > start and cell_len(lines[-1]) + 1 + cell_len(word) <= width:
                lines[-1] += " " + word
            else:
                lines.append(word)
    return "\n".join(lines)


class Compact:
    """A TableData laid out for the width it is given (see the module's docstring)."""

    def __init__(
        self,
        data: TableData,
        known_ids: Collection[str] = (),
        whole_ids: str = "--wide shows them whole",
    ) -> None:
        self.data = data
        self.whole_ids = whole_ids
        body = [r for r in data.rows if not r.group]
        self.body = body
        known = set(known_ids)
        headers = data.headers(short=True)
        ids = {c for r in body for c in r.cells if c in known}
        short = short_run_ids(ids, known)
        self.shortened = any(short[i] != i for i in ids)
        self.same: list[str] = []
        self.columns: list[_Column] = []
        for i, header in enumerate(headers):
            cells = [short.get(r.cells[i], r.cells[i]) for r in body]
            is_id = bool(cells) and all(r.cells[i] in known for r in body)
            if len(body) > 1 and 0 < i < data.numeric_from and not is_id and len(set(cells)) == 1:
                self.same.append(f"{header.lower()} {cells[0]}")
                continue
            self.columns.append(
                _Column(i, header, cells, numeric=i >= data.numeric_from, key=i == 0 or is_id)
            )
        _mark_groups(self.columns)

    # -- layout

    def _spec(self, columns: list[_Column], level: int) -> tuple[list[int], list[int]]:
        """Each column's narrowest and natural width at this level."""
        narrow, natural = [], []
        for col in columns:
            lines = [line for c in col.shown(level) for line in c.split("\n")] or [""]
            header = _header(col, columns)
            longest_word = max(cell_len(w) for w in _words(header))
            widest = max(cell_len(line) for line in lines)
            if col.wraps:
                natural.append(max([widest, *(cell_len(h) for h in header.split("\n"))]))
                narrow.append(max([longest_word, *(cell_len(w) for x in lines for w in _words(x))]))
            else:
                natural.append(max(widest, longest_word))
                narrow.append(natural[-1])
        return narrow, natural

    def _widths(self, columns: list[_Column], level: int, room: int) -> list[int] | None:
        """Column widths that fit `room` with no value cut, wrapping text columns at their
        spaces widest first; None when they cannot."""
        narrow, widths = self._spec(columns, level)
        gaps = GAP * (len(columns) - 1)
        if sum(narrow) + gaps > room:
            return None
        excess = sum(widths) + gaps - room
        while excess > 0:
            slack = [i for i, w in enumerate(widths) if w > narrow[i]]
            widest = max(slack, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1
        for i, col in enumerate(columns):  # room to spare: headers on one line, left first
            if col.wraps:
                continue
            lines = _header(col, columns).split("\n")
            wider = max(cell_len(line) for line in lines) - widths[i]
            if 0 < wider <= -excess:
                widths[i] += wider
                excess += wider
        return widths

    def _parts(self, room: int) -> list[tuple[list[_Column], list[int] | None, int]]:
        """The table at the least compact level that fits (its columns, their widths and
        the level), or else cut into parts that each repeat the key columns, a header
        group such as "Slice …" kept together where it fits."""
        for level in (0, 1, 2):
            widths = self._widths(self.columns, level, room)
            if widths is not None:
                return [(self.columns, widths, level)]
        keys = [c for c in self.columns if c.key]
        units: list[list[_Column]] = []
        for col in self.columns:
            if col.key:
                continue
            if units and col.group and units[-1][-1].group == col.group:
                units[-1].append(col)
            else:
                units.append([col])
        parts: list[list[_Column]] = []
        current: list[_Column] = []
        level = 2
        for unit in units:
            if self._widths(keys + current + unit, level, room) is not None:
                current += unit
                continue
            if current:
                parts.append(current)
                current = []
            for col in unit:  # a unit too wide for a part of its own: column by column
                if current and self._widths(keys + current + [col], level, room) is None:
                    parts.append(current)
                    current = []
                current.append(col)
        if current or not parts:
            parts.append(current)
        laid = []
        for part in parts:
            columns = sorted(keys + part, key=lambda c: c.index)
            for level in (0, 1, 2):  # each part as little compacted as it can be
                widths = self._widths(columns, level, room)
                if widths is not None:
                    break
            laid.append((columns, widths, level))
        return laid

    # -- rich

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        narrow, _ = self._spec([c for c in self.columns if c.key] or self.columns[:1], 2)
        _, natural = self._spec(self.columns, 0)
        gaps = GAP * (len(self.columns) - 1)
        widest = max(sum(natural) + gaps, 1)
        return Measurement(min(sum(narrow), widest), widest).clamp(max_width=options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Any]:
        data = self.data
        parts = self._parts(options.max_width)
        title = data.short_title or data.title
        if title:
            yield Text(title, style="table.title")
        for n, (columns, widths, level) in enumerate(parts):
            if n:
                yield Text("")
            yield self._table(columns, widths, level)
        caption = self._caption(moved=any(level for _, _, level in parts))
        if caption:
            yield Text(caption, style="dim")

    def _table(self, columns: list[_Column], widths: list[int] | None, level: int) -> Table:
        table = Table(
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            collapse_padding=True,
        )
        for k, col in enumerate(columns):
            width = None if widths is None else widths[k]
            header = _header(col, columns)
            if not col.wraps and width is not None:
                header = _fill(header, width)
            table.add_column(
                header,
                justify="right" if col.numeric else "left",
                no_wrap=not col.wraps,
                overflow="fold" if col.wraps else "ellipsis",
                width=width,
            )
        cells = {col.index: col.shown(level) for col in columns}
        body = iter(range(len(self.body)))
        for row in self.data.rows:
            if row.group:
                label = Text(row.cells[0], style="italic", no_wrap=False, overflow="fold")
                table.add_row(label, *[""] * (len(columns) - 1))
                continue
            r = next(body)
            line = [self._text(cells[col.index][r], col) for col in columns]
            table.add_row(*line, style="bold" if row.strong else "dim" if row.muted else None)
        return table

    def _text(self, cell: str, col: _Column) -> Text:
        first, _, second = cell.partition("\n")
        style = STATUS_COLOURS.get(first, "") if col.index == self.data.status_column else ""
        text = Text(first, style=style)
        if second:
            text.append("\n" + second, style="dim")
        return text

    def _caption(self, moved: bool) -> str:
        said = []
        if self.same:
            said.append("All: " + "; ".join(self.same) + ".")
        if moved and any(CI.fullmatch(c) for col in self.columns for c in col.cells):
            said.append("Under each value: its 95% CI.")
        if self.data.note:
            said.append(self.data.note)
        if self.shortened:
            said.append(f"Run ids by their shortest unique prefix; {self.whole_ids}.")
        return " ".join(said)


def _mark_groups(columns: list[_Column]) -> None:
    """Neighbouring columns named "Slice Sens", "Slice Spec", … form a group: its word is
    said once, over the first of them."""
    for i, col in enumerate(columns):
        if col.key:
            continue
        first, _, rest = col.header.partition(" ")
        if not rest:
            continue
        for j in (i - 1, i + 1):
            if 0 <= j < len(columns) and not columns[j].key:
                other, _, other_rest = columns[j].header.partition(" ")
                if other == first and other_rest:
                    col.group = first


def _header(col: _Column, shown: list[_Column]) -> str:
    """A grouped column's header without the group's word, unless it is the first of its
    group among the columns shown; that one carries the word on a line of its own."""
    if not col.group:
        return col.header
    rest = col.header.partition(" ")[2]
    before = [c for c in shown if c.index < col.index]
    if before and before[-1].group == col.group:
        return rest
    return f"{col.group}\n{rest}"


# ---------------------------------------------------------------- commands' printouts


def print_run_tables(console: Console, store: Store, run_id: str, wide: bool = False) -> None:
    """Slice-level (per fold + vote, test set, with 95% CIs) and patient-level tables of
    one run, each with the reported numbers beside it."""
    data = load_run_data(store, run_id, results=False)
    _print_tables(console, data, store.baselines(), wide)


def print_run(console: Console, store: Store, run_id: str, wide: bool = False) -> None:
    """`ichbench show`: provenance, then the run's tables beside the paper's."""
    from ichbench.views.validation import validation_table

    data = load_run_data(store, run_id, results=False)
    emit(console, rich_table(provenance_table(data)), Text(""))
    every_fold = store.folds(run_id, outer=None)  # all outer folds' fits, nested or not
    if every_fold:
        emit(console, rich_table(validation_table(data, every_fold), wide), Text(""))
    _print_tables(console, data, store.baselines(), wide)


def _print_tables(
    console: Console, data: RunData, baselines: list[dict[str, Any]], wide: bool = False
) -> None:
    for scope in ("slice", "patient"):
        ours, reported = run_tables(data, baselines, scope)
        tables = [rich_table(ours, wide), rich_table(reported, wide)]
        widths = [Measurement.get(console, console.options, t).maximum for t in tables]
        if sum(widths) + 3 <= console.width:
            emit(console, Columns(tables, padding=(0, 3)), Text(""))
        else:  # one under the other, a line apart
            emit(console, tables[0], Text(""), tables[1], Text(""))


def print_repeats(console: Console, store: Store, run_ids: list[str]) -> None:
    """`ichbench run --repeats R`: each repeat's headline result and their mean ± sd."""
    from ichbench.views.metrics import repeats_table

    emit(console, rich_table(repeats_table(store.summaries(run_ids))))


def print_paired(console: Console, paired: dict[str, Any], wide: bool = False) -> None:
    """`ichbench compare A B`: the paired table of B - A, or the one line saying why the
    two runs cannot be paired."""
    console.print()
    if paired["note"]:
        emit(console, Text(paired["note"]))
    else:
        emit(console, rich_table(paired_table(paired), wide))


def print_lines(console: Console, lines: Iterable[str]) -> None:
    """Sentences as they are (no markup, no highlighting), wrapped to the width."""
    emit(console, *[Text(line) for line in lines])


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
    if isinstance(value, dict):  # a JSON column's object, in JSON's spelling
        return Text(json.dumps(value, default=str))
    return Text(str(value))
