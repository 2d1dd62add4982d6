"""A store file against what this version of ichbench expects of it.

Before anything is written to a store, it is checked whole on a read-only connection, so
a damaged file is never touched: every migration in its ledger is one this version
knows (a store that a newer ichbench upgraded is refused for writing, and still read);
every table, column and view that its ledger promises is there; and every column of
every table reads back. Reading is the check DuckDB offers: it verifies a block's
checksum when it reads the block, and a truncated file fails to read. Counting rows is
not enough, since DuckDB answers `count(*)` from metadata without reading a block.

An older store is read as it is, never upgraded by a reader: on the reading connection,
each table, column or view that a later migration adds or redefines is supplied by a
temporary view of the same name (no rows, or the column NULL), so every reader, and a
user's SQL, sees the current schema. The first write upgrades the store.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ichbench import __version__
from ichbench.errors import StoreError
from ichbench.store import migrations
from ichbench.store.reads import first_line

NEWER_HINT = "made by a newer ichbench; upgrade ichbench to write to it"


@dataclass(frozen=True)
class Schema:
    """Tables (column name -> type, in order) and views (name -> CREATE statement)."""

    tables: dict[str, dict[str, str]]
    views: dict[str, str]


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def schema_of(con: duckdb.DuckDBPyConnection) -> Schema:
    """What the connection's database file holds (temporary objects left out)."""
    tables: dict[str, dict[str, str]] = {}
    for table, column, dtype in con.execute(
        "SELECT c.table_name, c.column_name, c.data_type FROM duckdb_columns() c "
        "JOIN duckdb_tables() t ON t.table_oid = c.table_oid "
        "WHERE c.database_name = current_database() AND c.schema_name = 'main' "
        "ORDER BY c.table_name, c.column_index"
    ).fetchall():
        tables.setdefault(table, {})[column] = dtype
    views = con.execute(
        "SELECT view_name, sql FROM duckdb_views() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND NOT internal"
    ).fetchall()
    return Schema(tables, dict(views))


def expected(applied: set[str] | frozenset[str] | None = None) -> Schema:
    """The schema that the migrations make, all of them or those named in `applied`
    (raises duckdb.Error for a ledger that no order of the migrations makes)."""
    return _schema_after(
        tuple(name for name, _ in migrations.MIGRATIONS if applied is None or name in applied)
    )


@functools.cache
def _schema_after(names: tuple[str, ...]) -> Schema:
    """Built once per list of migrations, in memory."""
    steps = dict(migrations.MIGRATIONS)
    con = duckdb.connect(":memory:")
    try:
        for name in names:
            steps[name](con)
        return schema_of(con)
    finally:
        con.close()


def _missing(have: Schema, want: Schema) -> list[str]:
    gaps = []
    for table, columns in want.tables.items():
        if table not in have.tables:
            gaps.append(f"table {table}")
            continue
        gaps += [
            f"column {table}.{column} ({dtype})"
            for column, dtype in columns.items()
            if have.tables[table].get(column) != dtype
        ]
    return gaps + [f"view {view}" for view in want.views if view not in have.views]


def _damaged(path: Path, what: str) -> StoreError:
    return StoreError(
        f"The store {path} is damaged: {what}; restore it from a copy, or move it aside "
        "to start a new store"
    )


def check_for_writing(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    """Raise a StoreError naming `path` unless this version may write to the store; on
    success, the migrations it still needs. `con` should be read-only."""
    try:
        return _check(con, path)
    except duckdb.Error as exc:
        raise _damaged(path, f"it cannot be read ({first_line(exc)})") from exc


def _check(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    done = migrations.applied(con)
    unknown = migrations.unknown(done)
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise StoreError(
            f"The store {path} has migration{plural} {', '.join(unknown)}, which ichbench "
            f"{__version__} does not know: it was {NEWER_HINT}"
        )
    try:
        want = expected(done)
    except duckdb.Error as exc:
        raise _damaged(path, f"its migrations ledger is inconsistent ({first_line(exc)})") from exc
    have = schema_of(con)
    gaps = _missing(have, want)
    if gaps:
        more = f" and {len(gaps) - 3} more" if len(gaps) > 3 else ""
        raise _damaged(path, f"{', '.join(gaps[:3])}{more} missing or of another type")
    for table in sorted(have.tables):
        try:
            con.execute(f"SELECT max(hash(COLUMNS(*))) FROM {quote(table)}").fetchall()
        except duckdb.Error as exc:
            raise _damaged(path, f"table {table} cannot be read ({first_line(exc)})") from exc
    for view in sorted(have.views):
        try:
            con.execute(f"SELECT * FROM {quote(view)} LIMIT 0").fetchall()
        except duckdb.Error as exc:
            raise _damaged(path, f"view {view} cannot be read ({first_line(exc)})") from exc
    return migrations.pending(con)


def _older_value(table: str, column: str) -> str:
    """What a column an older store lacks holds on its rows: what the migration adding
    it would write there, NULL unless it says otherwise."""
    if column == "outer_fold":
        return migrations.OUTER_FOLD_OF_OLDER_ROWS.get(table, "NULL")
    if table == "runs":
        return migrations.LABELS_OF_OLDER_ROWS.get(column, "NULL")
    return "NULL"


def compat_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The statements that give a reading connection the current schema over an older
    store: a temporary view for each table, column or view it lacks, and for each view
    that a later migration redefined (its columns as now, read through the stand-ins of
    its tables). None for a store that has every migration."""
    if not migrations.pending(con):
        return []
    have, want = schema_of(con), expected()
    database = quote(con.execute("SELECT current_database()").fetchone()[0])
    statements = []
    for table, columns in want.tables.items():
        found = have.tables.get(table)
        absent = [
            f"CAST({_older_value(table, column) if found else 'NULL'} AS {dtype}) "
            f"AS {quote(column)}"
            for column, dtype in columns.items()
            if found is None or column not in found
        ]
        if found is None:
            statements.append(
                f"CREATE TEMP VIEW {quote(table)} AS SELECT {', '.join(absent)} LIMIT 0"
            )
        elif absent:
            statements.append(
                f"CREATE TEMP VIEW {quote(table)} AS SELECT *, {', '.join(absent)} "
                f"FROM {database}.main.{quote(table)}"
            )
    for view, sql in want.views.items():
        if have.views.get(view) != sql and sql.startswith("CREATE VIEW "):
            statements.append("CREATE TEMP VIEW " + sql.removeprefix("CREATE VIEW "))
    return statements
