"""What every command shares: the consoles, and JSON for `--json` and CSV for `--csv`.

Data goes to stdout, progress and messages to stderr, so `ichbench runs --json | jq`
works. When output is not a terminal (a pipe, a file, CI logs) rich would assume 80
columns and truncate wide tables; `$COLUMNS`, else 200, is used instead.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from datetime import datetime
from typing import Any

from rich.console import Console

from ichbench.errors import UsageError


def _width(stream) -> int | None:
    if stream.isatty():
        return None  # rich measures the terminal
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        return 200


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """A reader that stopped reading (`ichbench runs | head -1`) is not an error: the
        rest of the output goes nowhere and the command ends with 0 (rich's own default
        is 1, which scripts would read as a bug)."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(0)


class Said:
    """What a command already told the user, so the entry point does not say it again
    (reset by every `main` call: tests run many commands in one process)."""

    interruption = False  # a command said how the run it was driving was interrupted


said = Said()

out = _Console(width=_width(sys.stdout))  # data
err = Console(stderr=True, width=_width(sys.stderr))  # progress, messages, errors


def to_json(value: Any) -> str:
    """JSON for `--json` outputs: timestamps as ISO 8601, arrays as lists, anything else
    exotic as text."""

    def default(obj: Any) -> Any:
        if isinstance(obj, datetime):
            return obj.isoformat()
        if hasattr(obj, "tolist"):
            return obj.tolist()
        return str(obj)

    return json.dumps(_finite(value), indent=2, default=default, allow_nan=False)


def _finite(value: Any) -> Any:
    """NaN and infinities as null: strict JSON has no spelling for them (`jq`, browsers
    and most parsers reject Python's `NaN`), and a metric that is undefined is absent."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """CSV for `--csv` outputs: one column per key (in first-seen order), timestamps as ISO
    8601, lists and objects as JSON (a spreadsheet cell holds `["augment:3.3"]`, which any
    reader parses back), NULL and undefined numbers as empty cells. `columns` keeps the
    header of a result without rows."""
    columns = list(columns or [])
    for row in rows:
        columns += [key for key in row if key not in columns]
    return table_csv(columns, [[row.get(key) for key in columns] for row in rows])


def table_csv(columns: list[str], rows: list) -> str:
    """CSV of rows given as sequences in `columns` order (a query's result may name two
    columns alike, which a row as a dict would merge), cells as in `to_csv`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(value) for value in row])
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple | dict):
        return json.dumps(_finite(value), default=str, allow_nan=False)
    return value


def emit_csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """CSV goes out verbatim, like JSON."""
    out.out(to_csv(rows, columns), end="", highlight=False)


def check_output_format(as_json: bool, as_csv: bool) -> None:
    """`--json` and `--csv` both ask for the whole output: one of them."""
    if as_json and as_csv:
        raise UsageError("--csv and --json are exclusive: choose one")


def emit_json(value: Any) -> None:
    """JSON goes out verbatim (no wrapping, no markup) so it can be piped."""
    out.out(to_json(value), highlight=False)


def complete_run_ids(incomplete: str) -> list[str]:
    """Shell completion of a RUN argument: the ids in the default store ($ICHBENCH_DB or
    ./runs.duckdb) that start or end with what was typed, newest first. Read-only, and
    silent when there is no store or it is busy: completion must never fail or write."""
    import duckdb

    from ichbench.paths import default_db

    path = default_db()
    if not path.is_file():
        return []
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            rows = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC").fetchall()
    except duckdb.Error:
        return []
    return [r for (r,) in rows if r.startswith(incomplete) or r.endswith(incomplete)]
