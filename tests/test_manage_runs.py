"""Runs a user can manage: named, tagged and noted (labels, not settings), found again by
`ichbench runs` filters, retagged with `ichbench tag`, and removed whole with
`ichbench rm` (never a run a live process is running, never anything outside the run's
own folder and rows); an older store gains the label columns; a run id names the second
its run started."""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from ichbench.cli import common, manage_cmd
from ichbench.config import RunConfig
from ichbench.errors import ExitCode
from ichbench.liveness import start_of
from ichbench.store import Store, migrations
from ichbench.store.owner import this_process

try:
    from cli_run import TINY_ARGS, error_lines, run_main
except ImportError:  # the tests folder imported as a package
    from tests.cli_run import TINY_ARGS, error_lines, run_main

LABELLED = ["--name", "alpha run", "--tag", "fast", "--tag", "v1", "--note", "first note"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Four tiny real runs, made once: a labelled one, the same configuration unlabelled,
    another strategy tagged v1, and a grid of one configuration named as a grid."""
    root = tmp_path_factory.mktemp("manage")
    db = root / "store" / "runs.duckdb"
    commands = {
        "alpha": ["run", *TINY_ARGS, *LABELLED],
        "plain": ["run", *TINY_ARGS],
        "aug": ["run", *TINY_ARGS, "--strategy", "augment:2", "--tag", "v1"],
        "grid": ["grid", "--strategy", "augment:3", *TINY_ARGS, "--name", "sweep", "--tag", "g"],
    }
    ids: dict[str, str] = {}
    from ichbench.cli.app import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICHBENCH_CACHE", str(root / "cache"))
        for key, args in commands.items():
            before = {r["run_id"] for r in Store(db, create=False).list_runs()} if ids else set()
            try:
                main([*args, "--db", str(db)])
            except SystemExit as exit_info:
                assert exit_info.code in (0, None), key
            (ids[key],) = {r["run_id"] for r in Store(db, create=False).list_runs()} - before
    ids["db"] = str(db)
    return ids


@pytest.fixture
def db(made: dict[str, str], tmp_path: Path) -> Path:
    """A copy of the module's store and its runs folder, for a test that changes them."""
    source = Path(made["db"])
    shutil.copytree(source.parent, tmp_path / "store")
    return tmp_path / "store" / source.name


@pytest.fixture
def ids(made: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in made.items() if k != "db"}


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common.out, "width", 400)


def runs_json(capsys, db: Path | str, *args: str) -> list[str]:
    code, out, err = run_main(capsys, "runs", "--json", "--db", str(db), *args)
    assert code == 0, err
    return [r["run_id"] for r in json.loads(out)]


def rows_of(db: Path, exclude: str | None = None) -> dict[str, list[tuple]]:
    """Every row of every table that holds runs, but those of run `exclude`."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT c.table_name FROM duckdb_columns() c JOIN duckdb_tables() t "
                "ON t.table_oid = c.table_oid WHERE c.column_name = 'run_id' "
                "AND c.schema_name = 'main'"
            ).fetchall()
        ]
        return {
            table: sorted(
                map(
                    repr,
                    con.execute(
                        f"SELECT * FROM {table} WHERE run_id IS DISTINCT FROM ?", [exclude]
                    ).fetchall(),
                )
            )
            for table in sorted(tables)
        }
    finally:
        con.close()


def count_rows(db: Path, run_id: str) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT c.table_name FROM duckdb_columns() c JOIN duckdb_tables() t "
                "ON t.table_oid = c.table_oid WHERE c.column_name = 'run_id' "
                "AND c.schema_name = 'main'"
            ).fetchall()
        ]
        return {
            t: con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id]).fetchone()[0]
            for t in tables
        }
    finally:
        con.close()


def folder(db: Path, run_id: str) -> Path:
    return db.parent / f"{db.name}.runs" / run_id


def set_owner(db: Path, run_id: str, owner: str | None, status: str = "running") -> None:
    """What the owner tests do: the run marked as another process left it."""
    con = duckdb.connect(str(db))
    try:
        con.execute(
            "UPDATE runs SET owner = ?, status = ? WHERE run_id = ?", [owner, status, run_id]
        )
    finally:
        con.close()


# ------------------------------------------------------------------ labels


def test_labels_are_stored_beside_the_configuration_not_in_it(made, ids) -> None:
    store = Store(made["db"], create=False)
    alpha, plain = store.get_run(ids["alpha"]), store.get_run(ids["plain"])
    assert (alpha["name"], alpha["tags"], alpha["note"]) == (
        "alpha run",
        ["fast", "v1"],
        "first note",
    )
    assert (plain["name"], plain["tags"], plain["note"]) == (None, [], None)
    assert alpha["config_hash"] == plain["config_hash"]  # labels are no setting
    assert alpha["config"] == plain["config"]
    assert not {"name", "tags", "note"} & {f.name for f in dataclasses.fields(RunConfig)}
    assert store.get_run(ids["aug"])["tags"] == ["v1"]


def test_a_grid_labels_every_run_it_makes(made, ids) -> None:
    grid = Store(made["db"], create=False).get_run(ids["grid"])
    assert grid["grid_id"] and (grid["name"], grid["tags"]) == ("sweep", ["g"])


def test_show_and_runs_say_the_labels(capsys, made, ids) -> None:
    code, out, _ = run_main(capsys, "show", ids["alpha"], "--db", made["db"])
    assert code == 0
    assert re.search(r"\nName\s+alpha run\n", out)
    assert re.search(r"\nTags\s+fast, v1\n", out)
    assert re.search(r"\nNote\s+first note\n", out)
    code, out, _ = run_main(capsys, "show", ids["plain"], "--db", made["db"])
    assert code == 0 and not re.search(r"\n(Name|Tags|Note) ", out)
    code, out, _ = run_main(capsys, "runs", "--db", made["db"])
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[:3] == ["Run", "Name", "Tags"]
    assert "alpha run" in out and "fast v1" in out and "sweep" in out
    rows = json.loads(run_main(capsys, "runs", "--json", "--db", made["db"])[1])
    by_id = {r["run_id"]: r for r in rows}
    assert by_id[ids["alpha"]]["note"] == "first note"
    assert by_id[ids["plain"]]["tags"] == []


def test_bad_labels_are_refused_before_anything_runs(capsys, tmp_path) -> None:
    db = tmp_path / "runs.duckdb"
    for args, value in (
        (["--tag", "two words"], "'two words'"),
        (["--tag", "ok", "--tag", "semi;colon"], "'semi;colon'"),
        (["--name", "   "], "'   '"),
    ):
        code, _, err = run_main(capsys, "run", *TINY_ARGS, *args, "--db", str(db))
        assert code == ExitCode.USAGE
        (line,) = error_lines(err)
        assert value in line
    assert not db.exists()


def test_run_id_names_the_second_the_run_started(made, ids) -> None:
    store = Store(made["db"], create=False)
    for run_id in ids.values():
        started = store.get_run(run_id)["started_at"]
        assert datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S") == started.replace(microsecond=0)


# ------------------------------------------------------------------ tag


def test_tag_adds_and_removes_tags(capsys, db, ids) -> None:
    code, out, _ = run_main(capsys, "tag", ids["plain"], "best", "rev:2", "best", "--db", str(db))
    assert code == 0 and out.strip() == f"{ids['plain']}: best rev:2"
    assert Store(db, create=False).get_run(ids["plain"])["tags"] == ["best", "rev:2"]
    assert runs_json(capsys, db, "--tag", "best") == [ids["plain"]]
    code, out, err = run_main(
        capsys, "tag", ids["alpha"], "fast", "absent", "--remove", "--db", str(db)
    )
    assert code == 0 and "no tag absent" in err
    assert Store(db, create=False).get_run(ids["alpha"])["tags"] == ["v1"]
    code, out, _ = run_main(capsys, "tag", ids["alpha"], "v1", "--remove", "--db", str(db))
    assert code == 0 and out.strip() == f"{ids['alpha']}: no tags"


def test_a_bad_tag_changes_nothing(capsys, db, ids) -> None:
    before = Store(db, create=False).get_run(ids["alpha"])["tags"]
    for bad in ("white space", "ümlaut", "", "a/b"):
        code, _, err = run_main(capsys, "tag", ids["alpha"], "good", bad, "--db", str(db))
        assert code == ExitCode.USAGE
        (line,) = error_lines(err)
        assert repr(bad) in line
    assert Store(db, create=False).get_run(ids["alpha"])["tags"] == before
    code, _, err = run_main(capsys, "tag", "no-such-run", "x", "--db", str(db))
    assert code == ExitCode.STORE and "Unknown run 'no-such-run'" in err


# ------------------------------------------------------------------ rm


def test_rm_removes_the_run_from_every_table_and_its_folder_only(capsys, db, ids) -> None:
    victim = ids["alpha"]
    others = rows_of(db, exclude=victim)
    unused = ("grid_selections", "evaluations", "evaluation_metrics")  # none for this run
    unused += ("evaluation_predictions", "evaluation_patients")
    assert all(n > 0 for t, n in count_rows(db, victim).items() if t not in unused)
    assert folder(db, victim).is_dir()
    code, out, _ = run_main(capsys, "rm", victim, "--yes", "--db", str(db))
    assert code == 0 and out.strip() == f"Removed {victim}"
    assert set(count_rows(db, victim).values()) == {0}
    assert not folder(db, victim).exists()
    assert rows_of(db) == others  # every other run's rows as they were
    for run_id in ids.values():
        if run_id != victim:
            assert folder(db, run_id).is_dir()
    assert runs_json(capsys, db) and victim not in runs_json(capsys, db)


def test_rm_takes_several_runs_by_prefix_and_suffix(capsys, db, ids) -> None:
    code, out, _ = run_main(
        capsys, "rm", ids["aug"][-6:], ids["grid"], ids["grid"], "--yes", "--db", str(db)
    )
    assert code == 0
    assert out.split() == ["Removed", ids["aug"], "Removed", ids["grid"]]
    assert sorted(runs_json(capsys, db)) == sorted([ids["alpha"], ids["plain"]])


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def owner_of(proc: subprocess.Popen) -> str:
    for _ in range(50):
        start = start_of(proc.pid)
        if start:
            return f"{socket.gethostname()}:{proc.pid}:{start}"
        time.sleep(0.01)
    raise AssertionError("no /proc entry for the child")


def test_rm_refuses_a_run_a_live_process_is_running(capsys, db, ids, sleeper) -> None:
    victim = ids["plain"]
    before = rows_of(db)
    for holder, pid in ((this_process(), os.getpid()), (owner_of(sleeper), sleeper.pid)):
        set_owner(db, victim, holder)
        code, _, err = run_main(capsys, "rm", ids["aug"], victim, "--yes", "--db", str(db))
        assert code == ExitCode.STORE
        (line,) = error_lines(err)
        assert victim in line and f"process {pid}" in line
        assert folder(db, victim).is_dir() and folder(db, ids["aug"]).is_dir()
    after = rows_of(db)
    assert {t: r for t, r in after.items() if t != "runs"} == {
        t: r for t, r in before.items() if t != "runs"
    }
    assert len(after["runs"]) == len(before["runs"])
    sleeper.kill()
    sleeper.wait()  # its process is gone: the run can go
    code, _, err = run_main(capsys, "rm", victim, "--yes", "--db", str(db))
    assert code == 0, err
    assert set(count_rows(db, victim).values()) == {0} and not folder(db, victim).exists()


def test_rm_asks_and_never_takes_silence_for_yes(capsys, db, ids, monkeypatch) -> None:
    victim = ids["alpha"]
    code, _, err = run_main(capsys, "rm", victim, "--db", str(db))  # stdin: no terminal
    assert code == ExitCode.USAGE
    (line,) = error_lines(err)
    assert "--yes" in line
    assert folder(db, victim).is_dir() and victim in runs_json(capsys, db)
    monkeypatch.setattr(manage_cmd, "_interactive", lambda: True)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, _, err = run_main(capsys, "rm", victim, "--db", str(db))
    assert code == 0 and "Nothing removed" in err and "alpha run" in err
    assert folder(db, victim).is_dir() and victim in runs_json(capsys, db)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    code, out, _ = run_main(capsys, "rm", victim, "--db", str(db))
    assert code == 0 and f"Removed {victim}" in out
    assert not folder(db, victim).exists() and victim not in runs_json(capsys, db)


def test_rm_never_leaves_the_runs_folder(capsys, db, ids) -> None:
    outside = db.parent / "precious"
    outside.mkdir()
    (outside / "data.txt").write_text("keep me")
    con = duckdb.connect(str(db))
    try:  # a crafted id in the store, as only a hand-edited store could hold
        con.execute(
            "INSERT INTO runs (run_id, status, started_at, tags) "
            "VALUES ('../precious', 'failed', now(), [])"
        )
    finally:
        con.close()
    before = rows_of(db)
    for typed in ("../precious", "..", "a/b", "."):
        code, _, err = run_main(capsys, "rm", typed, "--yes", "--db", str(db))
        assert code == ExitCode.USAGE
        (line,) = error_lines(err)
        assert repr(typed) in line
    code, _, err = run_main(capsys, "rm", "precious", "--yes", "--db", str(db))  # by suffix
    assert code == ExitCode.STORE
    (line,) = error_lines(err)
    assert "'../precious'" in line
    assert (outside / "data.txt").read_text() == "keep me"
    assert rows_of(db) == before


def _hold_lock(path: str, ready, release) -> None:
    con = duckdb.connect(path)
    ready.set()
    release.wait(60)
    con.close()


def test_rm_on_a_busy_store_removes_nothing(capsys, db, ids, monkeypatch) -> None:
    victim = ids["alpha"]
    monkeypatch.setenv("ICHBENCH_DB_TIMEOUT", "0.3")
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(db), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        code, _, err = run_main(capsys, "rm", victim, "--yes", "--db", str(db))
    finally:
        release.set()
        holder.join(60)
    assert code == ExitCode.STORE
    (line,) = error_lines(err)
    assert "locked by another process" in line
    assert folder(db, victim).is_dir() and victim in runs_json(capsys, db)


# ------------------------------------------------------------------ runs filters


def test_runs_filters_each_find_and_leave_out(capsys, made, ids) -> None:
    db = made["db"]
    every = set(ids.values())
    first = min(Store(db, create=False).get_run(r)["started_at"] for r in every)
    cases = [
        (["--tag", "fast"], {ids["alpha"]}),
        (["--tag", "v1"], {ids["alpha"], ids["aug"]}),
        (["--tag", "v1", "--tag", "fast"], {ids["alpha"]}),
        (["--tag", "nobody"], set()),
        (["--status", "finished"], every),
        (["--status", "failed"], set()),
        (["--dataset", "SYNTHETIC:10"], every),
        (["--dataset", "physionet"], set()),
        (["--strategy", "augment"], {ids["aug"], ids["grid"]}),
        (["--strategy", "augment:2"], {ids["aug"]}),
        (["--strategy", "undersample"], set()),
        (["--since", first.isoformat()], every),
        (["--since", "2000-01-01T01:00:00+01:00"], every),
        (["--since", "2999-01-01"], set()),
        (["--limit", "2"], None),
    ]
    for args, expected in cases:
        found = runs_json(capsys, db, *args)
        if expected is None:
            assert len(found) == 2
        else:
            assert set(found) == expected, args


def test_runs_sort_by_a_metric_highest_first(capsys, made) -> None:
    code, out, _ = run_main(capsys, "runs", "--json", "--sort", "mean_val_f1", "--db", made["db"])
    assert code == 0
    values = [r["mean_val_f1"] for r in json.loads(out)]
    assert values == sorted(values, reverse=True)
    code, out, _ = run_main(capsys, "runs", "--json", "--sort", "started_at", "--db", made["db"])
    started = [r["started_at"] for r in json.loads(out)]
    assert started == sorted(started, reverse=True)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--sort", "f1_score"], ["'f1_score'", "slice_f1", "patient_f1", "mean_val_f1"]),
        (["--since", "last week"], ["'last week'", "2026-01-31"]),
        (["--since", "2026-13-01"], ["'2026-13-01'"]),
        (["--status", "done"], ["'done'", "finished", "interrupted"]),
        (["--tag", "a b"], ["'a b'"]),
    ],
)
def test_runs_refuses_bad_values_by_name(capsys, made, args, named) -> None:
    code, out, err = run_main(capsys, "runs", *args, "--db", made["db"])
    assert code == ExitCode.USAGE and not out
    (line,) = error_lines(err)
    assert all(text in line for text in named), line


# ------------------------------------------------------------------ older stores


def test_an_older_store_reads_with_empty_labels_and_gains_them_when_written(
    capsys, tmp_path, monkeypatch
) -> None:
    db = tmp_path / "old.duckdb"
    before = [m for m in migrations.MIGRATIONS if m[0] != "m007_run_labels"]
    monkeypatch.setattr(migrations, "MIGRATIONS", before)
    Store(db)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO runs (run_id, status, started_at) VALUES ('old-1', 'failed', now())")
    con.close()
    monkeypatch.undo()

    def ledger() -> list[str]:
        con = duckdb.connect(str(db), read_only=True)
        try:
            return [r[0] for r in con.execute("SELECT name FROM _migrations").fetchall()]
        finally:
            con.close()

    run = Store(db, create=False).get_run("old-1")  # read as it is
    assert (run["name"], run["tags"], run["note"]) == (None, [], None)
    assert runs_json(capsys, db, "--status", "failed") == ["old-1"]
    assert runs_json(capsys, db, "--tag", "x") == []
    assert "m007_run_labels" not in ledger()
    code, out, err = run_main(capsys, "tag", "old-1", "kept", "--db", str(db))  # a write
    assert code == 0, err
    assert "m007_run_labels" in ledger()
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("SELECT name, tags, note FROM runs WHERE run_id = 'old-1'").fetchone()
        columns = {
            r[0]
            for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = 'run_summary'"
            ).fetchall()
        }
    finally:
        con.close()
    assert row == (None, ["kept"], None)
    assert {"name", "tags", "note"} <= columns
