"""Stores that are not what they seem: a damaged, incomplete or newer store is refused for
writing before anything is trained or written; an older store is read as it is, never
upgraded by a reader, even on read-only media; a store reached through a symlink is one
store with one checkpoint folder."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest
import typer
from small_fs import tmpfs
from typer.testing import CliRunner

from ichbench import paths
from ichbench.cli import store_cmd
from ichbench.config import RunConfig
from ichbench.errors import ExitCode, StoreError
from ichbench.lifecycle import run_config
from ichbench.store import Store, migrations

try:
    from test_store import fill
except ImportError:  # the tests folder imported as a package
    from tests.test_store import fill

NEWER = "m999_from_a_newer_ichbench"
BEFORE = "m005_patient_decisions_notes_plugins"  # the older store stops just before it
TINY = dict(
    data="synthetic:14,1,32",
    backbone="tinycnn",
    folds=3,
    epochs=1,
    image_size=32,
    batch_size=16,
    preset="quick",
    device="cpu",
)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A current store with two runs, closed cleanly (no WAL), built once."""
    path = tmp_path_factory.mktemp("healthy") / "runs.duckdb"
    store = Store(path)
    fill(store, "done-1", n_test=2000)
    fill(store, "half-2", finish=False)
    assert not wal(path).exists()
    return path


@pytest.fixture
def copy_of(tmp_path: Path) -> Callable[[Path, str], Path]:
    def make(source: Path, name: str = "runs.duckdb") -> Path:
        target = tmp_path / name
        target.write_bytes(source.read_bytes())
        return target

    return make


def older_store(path: Path, source: Path, before: str = BEFORE) -> Path:
    """A store at the schema of the migrations before `before`, as an older ichbench
    left it, holding the rows of `source` that fit that schema."""
    names = [name for name, _ in migrations.MIGRATIONS]
    con = duckdb.connect(str(path))
    try:
        con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
        for name, fn in migrations.MIGRATIONS[: names.index(before)]:
            fn(con)
            con.execute("INSERT INTO _migrations VALUES (?, now())", [name])
        con.execute(f"ATTACH '{source}' AS src (READ_ONLY)")
        tables = con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND table_name NOT IN ('_migrations', 'baselines')"
        ).fetchall()
        for (table,) in tables:
            columns = [
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE database_name = "
                    "current_database() AND table_name = ? ORDER BY column_index",
                    [table],
                ).fetchall()
            ]
            cols = ", ".join(columns)
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM src.{table}")
        con.execute("DETACH src")
    finally:
        con.close()
    assert not wal(path).exists()
    return path


def ledger(path: Path) -> list[str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT name FROM _migrations ORDER BY name").fetchall()]
    finally:
        con.close()


def used_block_offset(path: Path, table: str) -> int:
    """Where in the file a block holding `table`'s data starts."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        block_size = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
        block = con.execute(
            f"SELECT max(block_id) FROM pragma_storage_info('{table}') WHERE block_id >= 0"
        ).fetchone()[0]
    finally:
        con.close()
    return 3 * 4096 + block * block_size  # the file starts with three 4 KiB headers


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    store_cmd.register(app)
    return app


def invoke(app: typer.Typer, *args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.exception


# ------------------------------------------------------------------ damaged stores


def assert_refused_untouched(path: Path, *needles: str) -> StoreError:
    before = digest(path)
    with pytest.raises(StoreError) as info:
        Store(path, lock_timeout=5)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for needle in needles:
        assert needle in message
    assert digest(path) == before, "a refused store was written"
    assert not wal(path).exists(), "a refused store was given a WAL"
    return info.value


def test_a_truncated_store_is_refused_for_writing(healthy: Path, copy_of) -> None:
    path = copy_of(healthy)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    assert_refused_untouched(path, "is damaged")


def test_random_bytes_in_the_middle_of_a_store_are_found(healthy: Path, copy_of) -> None:
    path = copy_of(healthy)
    with open(path, "r+b") as f:
        f.seek(used_block_offset(path, "predictions") + 1024)
        f.write(os.urandom(256))
    assert_refused_untouched(path, "is damaged")


def test_a_store_missing_a_table_is_refused(healthy: Path, copy_of) -> None:
    path = copy_of(healthy)
    con = duckdb.connect(str(path))
    con.execute("DROP TABLE epochs")
    con.close()
    assert_refused_untouched(path, "is damaged", "epochs")


def test_a_store_missing_a_column_is_refused(healthy: Path, copy_of) -> None:
    path = copy_of(healthy)
    con = duckdb.connect(str(path))
    con.execute("ALTER TABLE predictions DROP COLUMN prob")
    con.close()
    assert_refused_untouched(path, "is damaged", "predictions.prob")


def test_a_damaged_store_opened_for_reading_is_refused_at_its_first_write(
    healthy: Path, copy_of
) -> None:
    """`ichbench run --resume` opens the store to read the run first, then writes."""
    path = copy_of(healthy)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    before = digest(path)
    store = Store(path, create=False, lock_timeout=5)
    with pytest.raises(StoreError, match="is damaged"):
        store.mark_run("half-2", "interrupted", error="x")
    assert digest(path) == before and not wal(path).exists()


@pytest.mark.slow
def test_ichbench_run_on_a_truncated_store_fails_before_training(
    healthy: Path, copy_of, tmp_path: Path
) -> None:
    path = copy_of(healthy)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    before = digest(path)
    args = ["--data", TINY["data"], "--backbone", "tinycnn", "--folds", "3", "--epochs", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "ichbench", "run", *args, "--image-size", "32", "--db", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "ICHBENCH_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"},
        timeout=600,
    )
    assert proc.returncode == ExitCode.STORE, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(path) in errors[0] and "is damaged" in errors[0]
    assert "fold 0" not in proc.stderr, "a fold trained on a damaged store"
    assert not paths.run_dir(path, "x").parent.exists(), "a checkpoint folder was created"
    assert not wal(path).exists()
    assert digest(path) == before


# ------------------------------------------------------------------ newer stores


@pytest.fixture
def newer(healthy: Path, copy_of) -> Path:
    """A store a newer ichbench wrote: one more migration, a new table and column."""
    path = copy_of(healthy)
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO _migrations VALUES (?, now())", [NEWER])
    con.execute("CREATE TABLE annotations (run_id VARCHAR, note VARCHAR)")
    con.execute("ALTER TABLE runs ADD COLUMN hardware JSON")
    con.close()
    return path


def test_a_store_from_a_newer_ichbench_is_refused_for_writing(newer: Path) -> None:
    error = assert_refused_untouched(newer, NEWER)
    assert str(error).endswith("made by a newer ichbench; upgrade ichbench to write to it")
    store = Store(newer, create=False)  # opened to read, as `run --resume` does
    with pytest.raises(StoreError, match=NEWER):
        store.mark_run("half-2", "interrupted", error="x")
    assert store.get_run("half-2")["status"] == "running"


def test_a_store_from_a_newer_ichbench_is_still_readable(app: typer.Typer, newer: Path) -> None:
    before = digest(newer)
    code, out, exc = invoke(app, "runs", "--json", "--db", str(newer))
    assert (code, exc) == (0, None) and {r["run_id"] for r in json.loads(out)} == {
        "done-1",
        "half-2",
    }
    code, out, exc = invoke(app, "show", "done-1", "--json", "--db", str(newer))
    assert (code, exc) == (0, None) and json.loads(out)["run"]["status"] == "finished"
    code, _, exc = invoke(app, "compare", "done-1", "--db", str(newer))
    assert (code, exc) == (0, None)
    code, out, exc = invoke(
        app, "sql", "SELECT count(*) AS n FROM annotations", "--json", "--db", str(newer)
    )
    assert (code, exc) == (0, None) and json.loads(out) == [{"n": 0}]
    assert digest(newer) == before


# ------------------------------------------------------------------ older stores


@pytest.fixture
def older(healthy: Path, tmp_path: Path) -> Path:
    return older_store(tmp_path / "older.duckdb", healthy)


def read_everything(app: typer.Typer, db: Path) -> None:
    """Every read-only command on `db`, each expected to succeed."""
    code, out, exc = invoke(app, "runs", "--json", "--db", str(db))
    assert (code, exc) == (0, None)
    assert {r["run_id"]: r["status"] for r in json.loads(out)} == {
        "done-1": "finished",
        "half-2": "running",
    }
    code, out, exc = invoke(app, "show", "done-1", "--json", "--db", str(db))
    assert (code, exc) == (0, None)
    shown = json.loads(out)
    assert shown["run"]["plugins"] is None  # a column the older schema lacks reads as NULL
    assert [f["notes"] for f in shown["folds"]] == [None, None]
    assert {m["model"] for m in shown["metrics"]} == {"fold", "vote"}
    code, _, exc = invoke(app, "show", "done-1", "--db", str(db))
    assert (code, exc) == (0, None)
    code, _, exc = invoke(app, "compare", "done-1", "--db", str(db))
    assert (code, exc) == (0, None)
    code, out, exc = invoke(
        app,
        "sql",
        "SELECT (SELECT count(*) FROM patient_decisions) AS decisions, "
        "(SELECT count(*) FROM predictions) > 0 AS predictions, "
        "(SELECT plugins FROM runs WHERE run_id = 'done-1') AS plugins",
        "--json",
        "--db",
        str(db),
    )
    assert (code, exc) == (0, None)
    assert json.loads(out) == [{"decisions": 0, "predictions": True, "plugins": None}]
    store = Store(db, create=False)  # as `ichbench report` opens it
    assert store.patient_decisions("done-1") == {}
    fold = store.load_fold("done-1", 0)
    assert fold.notes == {} and fold.compiled is False and len(fold.predictions.prob) > 0


def test_read_only_commands_never_upgrade_an_older_store(app: typer.Typer, older: Path) -> None:
    before = digest(older)
    read_everything(app, older)
    assert digest(older) == before and not wal(older).exists()
    assert ledger(older) == sorted(n for n, _ in migrations.MIGRATIONS if n < BEFORE)


@pytest.fixture
def read_only_media(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A tmpfs folder and a function that remounts it read-only (tests run as root, for
    whom a folder's permissions do not stop a write)."""
    folder = tmp_path / "media"

    def seal() -> None:
        sealed = subprocess.run(
            ["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True
        )
        if sealed.returncode:
            pytest.skip(f"cannot remount the tmpfs read-only: {sealed.stderr.strip()}")
        probe = folder / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")

    with tmpfs(folder, "64m"):
        yield folder, seal


def test_an_older_store_is_readable_on_read_only_media(
    app: typer.Typer, older: Path, read_only_media
) -> None:
    folder, seal = read_only_media
    db = folder / "runs.duckdb"
    db.write_bytes(older.read_bytes())
    seal()
    read_everything(app, db)
    assert ledger(db) == sorted(n for n, _ in migrations.MIGRATIONS if n < BEFORE)


def test_writing_to_an_older_store_upgrades_it_first(older: Path) -> None:
    store = Store(older, create=False)
    assert store.get_run("half-2")["status"] == "running"
    store.mark_run("half-2", "interrupted", error="stopped")
    assert ledger(older) == sorted(n for n, _ in migrations.MIGRATIONS)
    assert store.get_run("half-2")["status"] == "interrupted"
    assert store.get_run("done-1")["plugins"] is None


# ------------------------------------------------------------------ symlinked stores


def test_a_store_reached_through_a_symlink_is_one_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real.duckdb"
    link = tmp_path / "elsewhere" / "link.duckdb"
    link.parent.mkdir()
    link.symlink_to(real)
    store = Store(link)
    assert real.is_file() and store.path == real
    assert (
        paths.run_dir(link, "r1") == paths.run_dir(real, "r1") == tmp_path / "real.duckdb.runs/r1"
    )
    monkeypatch.setenv(paths.DB_ENV, str(link))
    assert paths.default_db() == real
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert Store(Path("link.duckdb")).path == real


@pytest.mark.slow
def test_a_run_through_a_symlink_and_its_resume_share_one_checkpoint_folder(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real.duckdb"
    link = tmp_path / "link.duckdb"
    link.symlink_to(real)
    cache = tmp_path / "cache"

    def stop_after_first_fold(event) -> None:
        if event.kind == "fold_finished":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_config(RunConfig(**TINY), link, observers=[stop_after_first_fold], cache_dir=cache)
    (run,) = Store(real, create=False).list_runs()
    assert run["status"] == "interrupted"
    result = run_config(RunConfig(**TINY), real, resume=run["run_id"], cache_dir=cache)
    folder = paths.run_dir(real, result.run_id)
    folds = Store(link, create=False).folds(result.run_id)
    assert [f["fold"] for f in folds] == [0, 1, 2]
    assert all((folder / f["checkpoint"]).is_file() for f in folds)
    assert not (tmp_path / "link.duckdb.runs").exists()
    assert not (tmp_path / "link.duckdb.wal").exists()
