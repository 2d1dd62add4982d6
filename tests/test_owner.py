"""Nobody resumes a run that another live process is running: the owner check, the store,
`ichbench run --resume`, the grid's planning, and stores made before the owner column."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from ichbench.cli.app import main
from ichbench.config import RunConfig
from ichbench.errors import ExitCode, RunBusyError, RunFinishedError
from ichbench.jobs import Busy, Job
from ichbench.lifecycle import Lifecycle
from ichbench.liveness import pid_alive, start_of
from ichbench.protocol import RunProtocol
from ichbench.store import Store, migrations
from ichbench.store.owner import alive_elsewhere, this_process

try:
    from test_store import fill, make_run
except ImportError:  # the tests folder imported as a package
    from tests.test_store import fill, make_run

TINY = dict(
    data="synthetic:10,1,32",
    backbone="tinycnn",
    folds=2,
    epochs=1,
    image_size=32,
    preset="quick",
    device="cpu",
)


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def owner_of(proc: subprocess.Popen) -> str:
    for _ in range(50):  # the child's /proc entry is there as soon as it is forked
        start = start_of(proc.pid)
        if start:
            return f"{socket.gethostname()}:{proc.pid}:{start}"
        time.sleep(0.01)
    raise AssertionError("no /proc entry for the child")


def protocol(tmp_path: Path) -> RunProtocol:
    return RunProtocol(RunConfig(**TINY), cache_dir=tmp_path / "cache")


def create(db: Path, tmp_path: Path) -> Job:
    """A new run of TINY, as `ichbench run` creates it."""
    return Lifecycle(Store(db)).open(protocol(tmp_path))


def plan(db: Path, tmp_path: Path) -> Job | Busy | str:
    """What a grid does with TINY: reuse its unfinished run, or skip it."""
    return Lifecycle(Store(db)).open(protocol(tmp_path), reuse=True)


def set_owner(db: Path, run_id: str, owner: str | None, status: str = "running") -> None:
    con = duckdb.connect(str(db))
    try:
        con.execute(
            "UPDATE runs SET owner = ?, status = ? WHERE run_id = ?", [owner, status, run_id]
        )
    finally:
        con.close()


def test_a_live_process_of_this_host_is_alive_and_nothing_else_is(sleeper):
    owner = owner_of(sleeper)
    assert alive_elsewhere(owner)
    assert not alive_elsewhere(this_process())  # this process may resume its own runs
    assert not alive_elsewhere(None) and not alive_elsewhere("")
    host, pid, _ = owner.split(":")
    assert not alive_elsewhere(f"{host}:{pid}:1")  # the PID recycled by another process
    assert not alive_elsewhere(f"another-host-{host}:{pid}:1")  # cannot be checked: resumable
    assert not alive_elsewhere("garbage")
    sleeper.kill()
    time.sleep(0.2)
    assert not alive_elsewhere(owner)  # killed, still a zombie: not running
    sleeper.wait()
    assert not alive_elsewhere(owner)


def test_pid_alive_knows_recycled_pids_and_zombies(sleeper):
    start = owner_of(sleeper).rsplit(":", 1)[1]
    assert pid_alive(sleeper.pid) and pid_alive(sleeper.pid, start)
    assert not pid_alive(sleeper.pid, "another-start")
    assert not pid_alive(0) and not pid_alive(-1) and not pid_alive(2**80)
    sleeper.kill()
    time.sleep(0.2)
    assert not pid_alive(sleeper.pid)  # a zombie is not running
    sleeper.wait()
    assert not pid_alive(sleeper.pid)


def test_store_refuses_to_take_over_a_live_run(tmp_path, sleeper):
    db = tmp_path / "runs.duckdb"
    store = Store(db)
    store.create_run(make_run("run-1"))
    assert store.get_run("run-1")["owner"] == this_process()
    set_owner(db, "run-1", owner_of(sleeper))
    with pytest.raises(RunBusyError, match=f"process {sleeper.pid} on"):
        store.mark_run("run-1", "running")
    assert store.get_run("run-1")["owner"] == owner_of(sleeper)  # untouched
    store.mark_run("run-1", "interrupted", error="not ours")  # its owner decides how it ends
    assert store.get_run("run-1")["status"] == "running"
    assert store.get_run("run-1")["error"] is None
    sleeper.kill()
    sleeper.wait()
    store.mark_run("run-1", "running")  # its process is gone: resumable, and now ours
    assert store.get_run("run-1")["owner"] == this_process()


def test_resume_and_grid_leave_a_live_run_alone(tmp_path, sleeper, capsys):
    db = tmp_path / "runs.duckdb"
    prepared = create(db, tmp_path)
    set_owner(db, prepared.run_id, owner_of(sleeper))

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--db", str(db), "--resume", prepared.run_id])
    assert exit_info.value.code == ExitCode.STORE
    err = capsys.readouterr().err
    assert f"Run {prepared.run_id} is being run by process {sleeper.pid}" in err
    assert Store(db).get_run(prepared.run_id)["owner"] == owner_of(sleeper)

    planned = plan(db, tmp_path)
    assert isinstance(planned, Busy) and planned.run_id == prepared.run_id

    sleeper.kill()
    sleeper.wait()
    planned = plan(db, tmp_path)
    assert isinstance(planned, Job) and planned.run_id == prepared.run_id
    assert planned.folds == [(0, 0), (0, 1)]


def test_a_store_made_before_the_owner_column_gains_it(tmp_path, monkeypatch):
    db = tmp_path / "old.duckdb"
    before = [m for m in migrations.MIGRATIONS if m[0] != "m004_owner_and_compiled"]
    monkeypatch.setattr(migrations, "MIGRATIONS", before)
    store = Store(db)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO runs (run_id, status, started_at) VALUES ('old-1', 'running', now())")
    con.close()
    monkeypatch.undo()
    store = Store(db)
    assert store.get_run("old-1")["owner"] is None
    store.mark_run("old-1", "running")  # no owner recorded: resumable
    assert store.get_run("old-1")["owner"] == this_process()


def test_exclusive_creation_refuses_a_configuration_finished_or_running_elsewhere(
    tmp_path, sleeper
):
    """What keeps two grids started together from both training a configuration: the
    check is made in the transaction that creates the run."""
    db = tmp_path / "runs.duckdb"
    store = Store(db)
    store.create_run(make_run("first"))
    store.create_run(make_run("second"), exclusive=True)  # "first" is this process's own
    set_owner(db, "first", owner_of(sleeper))
    set_owner(db, "second", None, status="interrupted")
    with pytest.raises(RunBusyError, match="Run first is being run by process"):
        store.create_run(make_run("third"), exclusive=True)
    store.create_run(make_run("other-config", config_hash="cfg-2"), exclusive=True)
    store.create_run(make_run("other-data", dataset_hash="data-2"), exclusive=True)
    assert store.create_run(make_run("fourth")) is None  # not exclusive: allowed
    fill(store, "done")  # the same configuration and data, finished
    with pytest.raises(RunFinishedError, match="Run done is already finished"):
        store.create_run(make_run("fifth"), exclusive=True)
    assert "third" not in {r["run_id"] for r in store.list_runs()}


def test_a_run_finished_by_another_process_while_planning_counts_as_finished(tmp_path, monkeypatch):
    db = tmp_path / "runs.duckdb"
    prepared = create(db, tmp_path)
    stale = [
        {
            "run_id": prepared.run_id,
            "status": "interrupted",
            "dataset_hash": prepared.dataset.dataset_hash,
            "plugins": prepared.protocol.plugin_versions(),
        }
    ]
    set_owner(db, prepared.run_id, None, status="finished")  # what the other process did
    monkeypatch.setattr(Store, "runs_with_config", lambda self, config_hash: stale)
    planned = plan(db, tmp_path)
    assert planned == prepared.run_id
