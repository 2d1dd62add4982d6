"""A reader holding the store never fails a run or loses a fold: results wait on disk and
go into the store once it is free, identical to a run that never waited."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from cli_run import TINY_ARGS, interrupted_trial

from ichbench.store import Store

TINY = [*TINY_ARGS, "--batch-size", "16", "--weight", "ich:4"]

HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
con.execute("SELECT count(*) FROM runs").fetchall()
print("holding", flush=True)
sys.stdin.readline()  # hold the store until the test says so
con.close()
"""


def ichbench(env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ichbench", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def env(tmp_path) -> dict:
    return {
        "ICHBENCH_CACHE": str(tmp_path / "cache"),
        "ICHBENCH_LOAD_PLUGINS": "",
        "HF_HUB_OFFLINE": "1",
        "PATH": "",
        "ICHBENCH_DB_TIMEOUT": "2",
        "OMP_NUM_THREADS": "1",
    }


def stored(db: Path) -> dict[str, list[tuple]]:
    """Every result row of the store's only run, without ids and times."""
    queries = {
        "runs": "SELECT status, config_hash, split_hash, threshold FROM runs",
        "folds": "SELECT fold, status, threshold, best_epoch, train_ich FROM folds ORDER BY 1",
        "metrics": "SELECT model, fold, scope, split, threshold, f1, auc, tp, fp, tn, fn "
        "FROM metrics ORDER BY 1, 2, 3, 4",
        "curves": "SELECT fold, threshold, f1 FROM curves ORDER BY 1, 2",
        "predictions": "SELECT fold, split, patient_id, slice, prob FROM predictions "
        "ORDER BY 1, 2, 3, 4",
        "patients": "SELECT fold, split, patient_id, decision FROM patient_decisions "
        "ORDER BY 1, 2, 3",
        "epochs": "SELECT fold, epoch, train_loss, val_f1 FROM epochs ORDER BY 1, 2",
    }
    with duckdb.connect(str(db), read_only=True) as con:
        return {name: con.execute(sql).fetchall() for name, sql in queries.items()}


@pytest.mark.slow
def test_a_reader_holding_the_store_across_a_run_loses_nothing(env, tmp_path):
    reference = tmp_path / "reference.duckdb"
    done = ichbench(env, "run", *TINY, "--db", str(reference))
    assert done.returncode == 0, done.stderr

    db = tmp_path / "busy.duckdb"
    Store(db)  # the store exists; a reader opens it and keeps it for the whole run
    reader = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "holding"
        started = time.monotonic()
        run = ichbench(env, "run", *TINY, "--db", str(db))
        took = time.monotonic() - started
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        assert "wait on disk" in run.stderr, run.stderr
        # the reader still holds the store: `runs` reads it and says what waits
        listed = ichbench(env, "runs", "--db", str(db))
        assert listed.returncode == 0, listed.stderr
        assert "waiting" in listed.stderr + listed.stdout
    finally:
        reader.stdin.write("\n")
        reader.stdin.flush()
        reader.wait(timeout=30)
    assert took < 200  # it trained through, it did not wait out the reader
    synced = ichbench(env, "store", "sync", "--db", str(db))
    assert synced.returncode == 0, synced.stderr
    assert stored(db) == stored(reference)
    again = ichbench(env, "store", "sync", "--db", str(db))
    assert again.returncode == 0 and "Nothing to sync" in again.stdout


@pytest.mark.slow
def test_the_next_run_takes_in_what_an_earlier_one_left(env, tmp_path):
    """No explicit sync: the next command that writes to the store ingests first."""
    db = tmp_path / "busy.duckdb"
    Store(db)
    reader = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "holding"
        first = ichbench(env, "run", *TINY, "--db", str(db))
        assert first.returncode == 0, first.stderr
    finally:
        reader.stdin.write("\n")
        reader.stdin.flush()
        reader.wait(timeout=30)
    second = ichbench(env, "run", *TINY, "--seed", "1", "--db", str(db))
    assert second.returncode == 0, second.stderr
    with duckdb.connect(str(db), read_only=True) as con:
        statuses = con.execute("SELECT status FROM runs").fetchall()
    assert sorted(s for (s,) in statuses) == ["finished", "finished"]


def test_a_fold_on_disk_is_finished_even_if_the_store_never_saw_it(tmp_path, monkeypatch, capsys):
    """The store is held while fold 0 finishes and the run is interrupted at fold 1: fold
    0 lives only on disk. Resumed once the store is free, the run keeps fold 0 (it is not
    trained again) and finishes."""

    from cli_run import TINY_ARGS, run_main

    from ichbench.protocol import RunProtocol

    monkeypatch.setenv("ICHBENCH_DB_TIMEOUT", "2")
    db = tmp_path / "busy.duckdb"
    Store(db)
    trial = interrupted_trial((0, 1))

    reader = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "holding"
        monkeypatch.setattr(RunProtocol, "fold_trial", trial)
        code, _, err = run_main(capsys, "run", *TINY_ARGS, "--db", str(db))
        monkeypatch.undo()
        monkeypatch.setenv("ICHBENCH_DB_TIMEOUT", "2")
        assert code == 130, err
    finally:
        reader.stdin.write("\n")
        reader.stdin.flush()
        reader.wait(timeout=30)
    (run_dir,) = (db.parent / f"{db.name}.runs").iterdir()
    assert (run_dir / "fold0.result.npz").is_file()
    code, _, err = run_main(capsys, "run", "--resume", run_dir.name, "--db", str(db))
    assert code == 0, err
    assert "fold 0: already finished, kept" in err
    assert "fold 0: threshold" not in err  # not trained again
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT status FROM runs").fetchall() == [("finished",)]
        assert con.execute("SELECT count(*) FROM folds").fetchall() == [(2,)]
