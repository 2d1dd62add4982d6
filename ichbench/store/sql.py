"""The store through DuckDB's own SQL: a user's query, and the whole store copied out.

Both only read. `run_query` tells a mistake in the user's SQL (a typo, an unknown table
or column: a usage error, with DuckDB's hints kept) from a store that cannot be read (a
store error); `Store.query` stays the one place that decides what is read-only.
`export_store` writes every table and view with DuckDB's COPY (or, for SQLite, its
sqlite extension) into a folder made beside the target and renamed into place only
once every table is written, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import errno
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ichbench import paths
from ichbench.errors import StoreError, UsageError
from ichbench.store import health
from ichbench.store.reads import first_line
from ichbench.store.store import Store

# What DuckDB raises for a statement that is wrong as written; a read-only refusal is
# never one of these (it is a permission or an invalid-input error, or no DuckDB error).
USER_MISTAKES = (
    duckdb.ParserException,
    duckdb.SyntaxException,
    duckdb.BinderException,
    duckdb.CatalogException,
    duckdb.ConversionException,
    duckdb.OutOfRangeException,
    duckdb.TypeMismatchException,
)

FORMATS = ("parquet", "csv", "sqlite")
_SQLITE_DB = "ichbench_export"


class QueryError(UsageError):
    """The user's SQL could not be parsed, bound or run as written. The message is
    DuckDB's whole text: its first line, then its hints (`Did you mean "metrics"?`, the
    candidate bindings, the query line with a caret under the fault), which is what
    lets the user fix the query."""


def run_query(store: Store, sql: str) -> tuple[list[str], list[tuple]]:
    """`store.query(sql)`, with the user's own mistakes raised as `QueryError` (a usage
    error) and everything else (a read-only refusal, an unreadable store) left as the
    store error it is."""
    try:
        return store.query(sql)
    except StoreError as exc:
        cause = exc.__cause__
        if isinstance(cause, USER_MISTAKES):
            raise QueryError(duckdb_message(cause)) from cause
        raise


def duckdb_message(exc: BaseException) -> str:
    """DuckDB's error text without its blank lines; the caret line keeps its indent, so
    it still points under the faulty part of the `LINE 1:` line above it."""
    lines = [line.rstrip() for line in str(exc).strip().splitlines()]
    return "\n".join(line for line in lines if line) or type(exc).__name__


# ------------------------------------------------------------------ export


@dataclass(frozen=True)
class Exported:
    """One table or view written: its name, its row count and where it now is."""

    name: str
    rows: int
    path: Path


def export_store(
    store: Store,
    out: Path,
    fmt: str,
    *,
    force: bool = False,
    on_table: Callable[[Exported], None] | None = None,
) -> list[Exported]:
    """Every table and view of `store` into the folder `out`: one `<name>.parquet` or
    `<name>.csv` per table, or one `<store>.sqlite` holding them all. Older stores are
    read through the same compatibility views as every reader, so the export has
    today's schema and the store is never upgraded.

    `out` must be missing or empty, unless `force` (then it is replaced, but only once
    the new export is complete). The export is written into a hidden folder beside
    `out` and renamed into place; on any failure that folder is removed again, with any
    parent folder this call made. In CSV and SQLite, list and struct columns are JSON
    text (JSON columns already are); Parquet keeps DuckDB's types.
    """
    if fmt not in FORMATS:
        raise UsageError(f"Unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    target = _check_target(store, out, force)
    done: list[Exported] = []
    with store._reader() as con:
        if fmt == "sqlite":
            _load_sqlite(con)
        missing = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
        staging: Path | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = _fresh_folder(target, "export")
            if fmt == "sqlite":
                file = f"{store.path.stem}.sqlite"
                attach = f"ATTACH {_literal(staging / file)} AS {_SQLITE_DB}"
                _write(con, f"{attach} (TYPE sqlite, READ_WRITE)", target / file)
            for name in _exported_names(con):
                item = _export_one(con, name, fmt, staging, target, store.path.stem)
                done.append(item)
                if on_table is not None:
                    on_table(item)
            if fmt == "sqlite":
                con.execute(f"DETACH {_SQLITE_DB}")
            _swap_in(staging, target)
        except BaseException:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            for folder in missing:  # innermost first
                _remove_empty(folder)
            raise
    return done


def _check_target(store: Store, out: Path, force: bool) -> Path:
    """The folder to export to, refused before anything is written when it cannot be
    used, or when replacing it would touch the store itself."""
    target = out.expanduser().resolve()
    checkpoints = paths.run_dir(store.path, "run").parent
    if store.path.is_relative_to(target) or target.is_relative_to(checkpoints):
        raise UsageError(
            f"--out {out} holds the store {store.path} or its checkpoints; "
            "choose a folder outside them"
        )
    if target.exists() and not target.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise UsageError(
            f"--out {out} is not empty; choose a new folder, or add --force to replace it"
        )
    return target


def _load_sqlite(con: duckdb.DuckDBPyConnection) -> None:
    """DuckDB's sqlite extension is not built in: DuckDB fetches it from the internet
    the first time. Where it can be neither found nor fetched, the export stops here,
    before anything is written."""
    try:
        con.execute("LOAD sqlite")
    except duckdb.Error as exc:
        version = duckdb.__version__
        platform = con.execute("PRAGMA platform").fetchone()[0]
        raise UsageError(
            f"--format sqlite needs DuckDB's sqlite extension, which could not be loaded "
            f"({first_line(exc)}). Install it once with internet access: python -c "
            "\"import duckdb; duckdb.install_extension('sqlite')\", or copy "
            f"sqlite_scanner.duckdb_extension into ~/.duckdb/extensions/v{version}/{platform}/; "
            "or export with --format parquet or --format csv"
        ) from exc


def _fresh_folder(target: Path, purpose: str) -> Path:
    """A new hidden folder beside `target`, made with the usual permissions (so the
    export, once renamed, is as readable as any folder the user makes)."""
    folder = target.parent / f".{target.name}.{purpose}-{secrets.token_hex(4)}"
    try:
        folder.mkdir()
    except OSError as exc:  # named by the folder the user asked for, not the hidden one
        raise OSError(exc.errno, exc.strerror, str(target)) from exc
    return folder


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty after all (someone else wrote there): left as found


def _exported_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every table of today's schema, then every view, then anything else the file
    holds (from a newer ichbench); the compatibility views stand in for what an older
    store lacks."""
    want, have = health.expected(), health.schema_of(con)
    names = [*want.tables, *(t for t in have.tables if t not in want.tables)]
    names += [*want.views, *(v for v in have.views if v not in want.views)]
    return names


def _select(con: duckdb.DuckDBPyConnection, name: str, fmt: str) -> str:
    """`SELECT` of the table's columns, nested ones as JSON text where the format has no
    type for them (CSV, SQLite)."""
    table = health.quote(name)
    if fmt == "parquet":
        return f"SELECT * FROM {table}"
    columns = []
    for column, dtype, *_ in con.execute(f"DESCRIBE SELECT * FROM {table}").fetchall():
        quoted = health.quote(column)
        nested = dtype.endswith("]") or dtype.startswith(("STRUCT", "MAP", "UNION"))
        columns.append(f"to_json({quoted})::VARCHAR AS {quoted}" if nested else quoted)
    return f"SELECT {', '.join(columns)} FROM {table}"


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _export_one(
    con: duckdb.DuckDBPyConnection,
    name: str,
    fmt: str,
    staging: Path,
    target: Path,
    stem: str,
) -> Exported:
    select = _select(con, name, fmt)
    if fmt == "sqlite":
        file = f"{stem}.sqlite"
        _write(con, f"CREATE TABLE {_SQLITE_DB}.{health.quote(name)} AS {select}", target / file)
    else:
        file = f"{name}.{fmt}"
        options = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER true"
        _write(con, f"COPY ({select}) TO {_literal(staging / file)} ({options})", target / file)
    rows = con.execute(f"SELECT count(*) FROM {health.quote(name)}").fetchone()[0]
    return Exported(name, rows, target / file)


def _write(con: duckdb.DuckDBPyConnection, statement: str, file: Path) -> None:
    """A statement that writes `file`. DuckDB's I/O errors here are the disk's (full,
    read-only), not the store's: they are raised as the OSError they are."""
    try:
        con.execute(statement)
    except duckdb.IOException as exc:
        raise OSError(
            errno.EIO, f"Writing {file.name} failed: {first_line(exc)}", str(file)
        ) from exc


def _swap_in(staging: Path, target: Path) -> None:
    """Put the finished export at `target`; a folder there already (empty, or replaced
    with --force) is moved aside first and removed only once the new one is in place."""
    if not target.exists():
        staging.rename(target)
        return
    old = target.parent / f".{target.name}.replaced-{secrets.token_hex(4)}"
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)
