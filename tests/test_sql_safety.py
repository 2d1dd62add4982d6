"""`ichbench sql` is read-only: no statement, however phrased, changes the store, writes
or reads a file (not even one beside the store), or loads an extension; each refusal
is one `Error:` line and exit 5.

Every case runs as a real `ichbench sql` process on its own copy of a filled store, and
the copy must afterwards be byte-identical, with the same row counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ichbench.errors import ExitCode
from ichbench.store import Store

try:
    from test_store import fill
except ImportError:  # the tests folder imported as a package
    from tests.test_store import fill

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Path:
    """A store with a finished and an unfinished run, built once."""
    path = tmp_path_factory.mktemp("sql-store") / "runs.duckdb"
    store = Store(path)
    fill(store, "done-1", f1=0.7)
    fill(store, "half-2", finish=False)
    return path


@pytest.fixture
def db(filled, tmp_path) -> Path:
    path = tmp_path / "store" / "runs.duckdb"
    path.parent.mkdir()
    shutil.copyfile(filled, path)
    (path.parent / "notes.csv").write_text("patient,secret\n49,confidential\n")
    return path


def state(db: Path) -> dict[str, object]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables ORDER BY table_name"
            ).fetchall()
        ]
        counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        runs = con.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall()
    finally:
        con.close()
    return {
        "sha256": hashlib.sha256(db.read_bytes()).hexdigest(),
        "counts": counts,
        "runs": runs,
        "files": sorted(p.name for p in db.parent.iterdir()),
    }


def sql(db: Path, query: str, *options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ICHBENCH_DEBUG"}
    env.update(ICHBENCH_LOAD_PLUGINS="", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "ichbench", "sql", "--db", str(db), *options, query],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=db.parent,
    )


# `{dir}` is the store's folder: a statement that managed to write would leave a file there
REFUSED = {
    "drop": "DROP TABLE runs",
    "insert": "INSERT INTO runs (run_id, status) VALUES ('x', 'finished')",
    "update": "UPDATE runs SET status = 'finished' WHERE run_id = 'half-2'",
    "delete": "DELETE FROM runs",
    "create": "CREATE TABLE stolen AS SELECT * FROM runs",
    "create-view": "CREATE VIEW v AS SELECT 1",
    "alter": "ALTER TABLE runs ADD COLUMN x INTEGER",
    "attach": "ATTACH '{dir}/other.duckdb' AS other",
    "copy-to": "COPY runs TO '{dir}/runs.csv'",
    "copy-query-to": "COPY (SELECT * FROM metrics) TO '{dir}/metrics.parquet' (FORMAT parquet)",
    "export": "EXPORT DATABASE '{dir}/export'",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set": "SET enable_external_access = true",
    "checkpoint": "CHECKPOINT",
    "multi-statement": "SELECT 1; DROP TABLE runs",
    "explain-analyze-delete": "EXPLAIN ANALYZE DELETE FROM runs",
    "read-file": "SELECT * FROM read_csv('{dir}/notes.csv')",
    "read-file-by-name": "SELECT * FROM '{dir}/notes.csv'",
    "read-text": "SELECT content FROM read_text('{dir}/notes.csv')",
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_statement_is_refused_with_one_line_and_changes_nothing(name, db):
    query = REFUSED[name].format(dir=db.parent)
    before = state(db)
    done = sql(db, query)
    stderr = ANSI.sub("", done.stderr)
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    assert "rerun with --debug" not in errors[0], errors[0]
    assert done.returncode == ExitCode.STORE, errors[0]
    assert done.stdout.strip() == "" and "confidential" not in stderr, done.stdout
    assert state(db) == before


def test_a_query_naming_no_table_is_the_users_mistake_and_changes_nothing(db):
    """An unknown table is a typo in the query, not a store that refuses: exit 2."""
    before = state(db)
    done = sql(db, "SELECT * FROM no_such_table")
    errors = [line for line in ANSI.sub("", done.stderr).splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no_such_table" in errors[0], done.stderr
    assert done.returncode == ExitCode.USAGE
    assert state(db) == before


def test_write_is_refused_as_read_only(db):
    done = sql(db, "DELETE FROM runs")
    assert "read-only" in done.stderr and "DELETE" in done.stderr, done.stderr


def test_select_works(db):
    before = state(db)
    done = sql(db, "SELECT run_id, status FROM runs ORDER BY run_id", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"run_id": "done-1", "status": "finished"},
        {"run_id": "half-2", "status": "running"},
    ]
    assert state(db) == before


def test_select_joining_metrics_and_baselines_works(db):
    done = sql(
        db,
        "SELECT count(*) AS n FROM metrics m, baselines b WHERE m.run_id = 'done-1' "
        "AND m.model = 'vote' AND b.scope = m.scope",
        "--csv",
    )
    assert done.returncode == 0, done.stderr
    header, value = done.stdout.split()
    assert header == "n" and int(value) > 0
