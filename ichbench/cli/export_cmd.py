"""`ichbench export`: the run store as files other tools open (datasette, pandas, a
spreadsheet), written by DuckDB itself. It only reads the store, like `ichbench sql`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ichbench import paths
from ichbench.cli.common import err
from ichbench.cli.options import DbOpt


def export(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder to write; must be new or empty (see --force). Made only once "
            "every table is written, so a failed export leaves nothing.",
        ),
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="parquet or csv (one file per table and view), or sqlite (one "
            "<store>.sqlite; needs DuckDB's sqlite extension).",
        ),
    ] = "parquet",
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace a non-empty --out, once the new export is done."),
    ] = False,
    db: DbOpt = None,
) -> None:
    """Export every table and view of the store (docs/store.md) to Parquet, CSV or
    SQLite. CSV and SQLite hold list and JSON columns as JSON text. The store is read,
    never written or upgraded."""
    from ichbench.store import Store
    from ichbench.store.sql import Exported, export_store

    store = Store(db or paths.default_db(), create=False)

    def progress(item: Exported) -> None:
        rows = f"{item.rows} row" + ("" if item.rows == 1 else "s")
        err.print(f"{escape(item.name)}: {rows} -> {escape(str(item.path))}", highlight=False)

    done = export_store(store, out, fmt.lower(), force=force, on_table=progress)
    err.print(
        f"Exported {len(done)} tables and views of {escape(str(store.path))} to "
        f"{escape(str(out.expanduser().resolve()))}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
