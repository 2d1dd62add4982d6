"""`ichbench export` on a store made by a real tiny run: every table and view of the
documented schema comes out with the store's row counts, readable without ichbench; the
store is never changed; and an export that cannot finish leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from cli_run import error_lines, run_main
from small_fs import tmpfs

from ichbench.errors import ExitCode
from ichbench.store import migrations

try:
    from test_sql_errors import tiny_store  # noqa: F401  (a fixture)
    from test_store_health import BEFORE, older_store
except ImportError:  # the tests folder imported as a package
    from tests.test_sql_errors import tiny_store  # noqa: F401
    from tests.test_store_health import BEFORE, older_store

DOCS = Path(__file__).parent.parent / "docs" / "store.md"
READERS = {"parquet": "read_parquet", "csv": "read_csv"}


def documented() -> set[str]:
    """Every table and view docs/store.md describes."""
    return set(re.findall(r"^### `(\w+)`", DOCS.read_text(), flags=re.M))


def counts(db: Path) -> dict[str, int]:
    """Row count of every table and view, read straight from the store file."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        names = [r[0] for r in tables]
        return {n: con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        con.close()


def state(db: Path) -> tuple[str, list[str]]:
    """The store's bytes and what lies beside it."""
    return hashlib.sha256(db.read_bytes()).hexdigest(), sorted(p.name for p in db.parent.iterdir())


def export(capsys, db: Path, out: Path, *options: str) -> tuple[int, str, str]:
    return run_main(capsys, "export", "--db", str(db), "--out", str(out), *options)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_every_table_comes_out_with_the_stores_row_counts(
    capsys, tiny_store: Path, tmp_path: Path, fmt: str
) -> None:
    before = state(tiny_store)
    out = tmp_path / "export"
    code, stdout, err = export(capsys, tiny_store, out, "--format", fmt)
    assert code == 0, err
    assert stdout == ""
    files = {p.stem: p for p in out.iterdir()}
    assert {p.suffix for p in files.values()} == {f".{fmt}"}
    assert documented() <= set(files), documented() - set(files)
    expected = counts(tiny_store)
    assert set(files) == set(expected)
    assert expected["runs"] == 1 and expected["predictions"] > 0
    con = duckdb.connect()
    for name, path in files.items():
        (n,) = con.execute(f"SELECT count(*) FROM {READERS[fmt]}('{path}')").fetchone()
        assert n == expected[name], name
    progress = [line for line in err.splitlines() if ": " in line and " -> " in line]
    assert len(progress) == len(files)
    assert f"runs: 1 row -> {out.resolve() / f'runs.{fmt}'}" in progress
    assert state(tiny_store) == before


def test_csv_holds_lists_and_json_as_json_text(capsys, tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "csv"
    code, _, err = export(capsys, tiny_store, out, "--format", "csv")
    assert code == 0, err
    con = duckdb.connect()
    run = con.execute(
        f"SELECT strategies, config, versions, warnings FROM read_csv('{out / 'runs.csv'}', "
        "all_varchar = true)"
    ).fetchone()
    strategies, config, versions, warnings = (json.loads(v) for v in run)
    assert isinstance(strategies, list) and isinstance(warnings, list)
    assert config["backbone"] == "tinycnn" and "duckdb" in versions
    folds = con.execute(
        f"SELECT train_patients, val_patients, notes FROM read_csv('{out / 'folds.csv'}', "
        "all_varchar = true)"
    ).fetchall()
    assert len(folds) == 2
    for train, val, notes in folds:
        train, val = json.loads(train), json.loads(val)
        assert train and val and all(isinstance(p, int) for p in train + val)
        assert not set(train) & set(val)
        assert isinstance(json.loads(notes), dict)


def test_parquet_keeps_the_stores_types(capsys, tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "pq"
    code, _, err = export(capsys, tiny_store, out)  # parquet is the default
    assert code == 0, err
    [(patients,)] = duckdb.sql(
        f"SELECT train_patients FROM read_parquet('{out / 'folds.parquet'}') LIMIT 1"
    ).fetchall()
    assert isinstance(patients, list) and all(isinstance(p, int) for p in patients)


def test_a_store_held_open_by_another_reader_exports_unchanged(
    capsys, tiny_store: Path, tmp_path: Path
) -> None:
    before = state(tiny_store)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            "con = duckdb.connect(sys.argv[1], read_only=True)\n"
            "con.execute('SELECT count(*) FROM runs').fetchall()\n"
            "print('open', flush=True)\n"
            "time.sleep(120)\n",
            str(tiny_store),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        code, _, err = export(capsys, tiny_store, tmp_path / "out", "--format", "csv")
        assert code == 0, err
        code, _, err = export(capsys, tiny_store, tmp_path / "out2")
        assert code == 0, err
    finally:
        holder.kill()
        holder.wait()
    assert state(tiny_store) == before


def test_an_older_store_exports_with_todays_schema_and_is_not_upgraded(
    capsys, tiny_store: Path, tmp_path: Path
) -> None:
    (tmp_path / "older").mkdir()
    older = older_store(tmp_path / "older" / "runs.duckdb", tiny_store)
    before = state(older)
    out = tmp_path / "out"
    code, _, err = export(capsys, older, out)
    assert code == 0, err
    assert documented() <= {p.stem for p in out.iterdir()}
    plugins = duckdb.sql(f"SELECT plugins FROM read_parquet('{out / 'runs.parquet'}')")
    assert plugins.fetchall() == [(None,)]  # a column the older schema lacks: NULL
    assert state(older) == before
    con = duckdb.connect(str(older), read_only=True)
    try:
        ledger = [
            r[0] for r in con.execute("SELECT name FROM _migrations ORDER BY name").fetchall()
        ]
    finally:
        con.close()
    assert ledger == sorted(n for n, _ in migrations.MIGRATIONS if n < BEFORE)


def test_a_non_empty_out_is_refused_unless_forced(capsys, tiny_store: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, stdout, err = export(capsys, tiny_store, out)
    assert code == ExitCode.USAGE, err
    assert error_lines(err) == [
        f"Error: --out {out} is not empty; choose a new folder, or add --force to replace it"
    ]
    assert stdout == "" and [p.name for p in out.iterdir()] == ["mine.txt"]

    code, _, err = export(capsys, tiny_store, out, "--format", "csv", "--force")
    assert code == 0, err
    assert "mine.txt" not in {p.name for p in out.iterdir()}
    assert (out / "runs.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing hidden left


def test_an_empty_out_is_used(capsys, tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    code, _, err = export(capsys, tiny_store, out)
    assert code == 0, err
    assert (out / "runs.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize("where", ["store-folder", "checkpoints"])
def test_an_out_holding_the_store_is_refused_even_forced(
    capsys, tiny_store: Path, tmp_path: Path, where: str
) -> None:
    db = tmp_path / "store" / "runs.duckdb"
    db.parent.mkdir()
    shutil.copyfile(tiny_store, db)
    out = db.parent if where == "store-folder" else db.parent / "runs.duckdb.runs" / "x"
    before = state(db)
    code, _, err = export(capsys, db, out, "--force")
    assert code == ExitCode.USAGE, err
    assert "holds the store" in error_lines(err)[0]
    assert state(db) == before


def test_an_unknown_format_is_a_usage_error(capsys, tiny_store: Path, tmp_path: Path) -> None:
    code, _, err = export(capsys, tiny_store, tmp_path / "out", "--format", "xlsx")
    assert code == ExitCode.USAGE, err
    assert error_lines(err) == [
        "Error: Unknown export format 'xlsx'; choose one of parquet, csv, sqlite"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_missing_store_is_a_store_error(capsys, tmp_path: Path) -> None:
    missing = tmp_path / "missing.duckdb"
    code, _, err = export(capsys, missing, tmp_path / "out")
    assert code == ExitCode.STORE, err
    assert list(tmp_path.iterdir()) == []


def sqlite_loads() -> str | None:
    """None where DuckDB's sqlite extension loads here, else DuckDB's reason."""
    try:
        duckdb.connect().execute("LOAD sqlite")
    except duckdb.Error as exc:
        return str(exc).splitlines()[0]
    return None


def test_sqlite_exports_or_says_how_to_get_the_extension(
    capsys, tiny_store: Path, tmp_path: Path
) -> None:
    before = state(tiny_store)
    out = tmp_path / "out"
    code, _, err = export(capsys, tiny_store, out, "--format", "sqlite")
    if sqlite_loads() is not None:
        assert code == ExitCode.USAGE, err
        [line] = error_lines(err)
        assert line.startswith("Error: --format sqlite needs DuckDB's sqlite extension")
        assert "install_extension('sqlite')" in line and "--format parquet" in line
        assert list(tmp_path.iterdir()) == []
    else:
        import sqlite3

        assert code == 0, err
        assert [p.name for p in out.iterdir()] == ["runs.sqlite"]
        con = sqlite3.connect(out / "runs.sqlite")
        try:
            for name, n in counts(tiny_store).items():
                assert con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] == n
            (strategies,) = con.execute("SELECT strategies FROM runs").fetchone()
            assert isinstance(json.loads(strategies), list)
        finally:
            con.close()
    assert state(tiny_store) == before


def test_a_disk_that_fills_up_leaves_no_partial_export(
    capsys, tiny_store: Path, tmp_path: Path
) -> None:
    before = state(tiny_store)
    with tmpfs(tmp_path / "small", "40k") as small:
        code, _, err = export(capsys, tiny_store, small / "a" / "b" / "out", "--format", "csv")
        assert code == ExitCode.SYSTEM, err
        [line] = error_lines(err)
        assert "No space left on device" in line
        assert ": " in err.split("Error:")[0]  # some tables were written before it filled up
        assert list(small.iterdir()) == []  # not the export, nor the folders made for it
    assert state(tiny_store) == before


def test_a_read_only_disk_leaves_nothing(capsys, tiny_store: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "media", "1m") as media:
        sealed = subprocess.run(
            ["mount", "-o", "remount,ro", str(media)], capture_output=True, text=True
        )
        if sealed.returncode:
            pytest.skip(f"cannot remount the tmpfs read-only: {sealed.stderr.strip()}")
        code, _, err = export(capsys, tiny_store, media / "out")
        assert code == ExitCode.SYSTEM, err
        assert error_lines(err) == [f"Error: Read-only file system ({media / 'out'})"]
        assert list(media.iterdir()) == []
