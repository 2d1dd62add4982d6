"""Trials packed on one device: folds and grid trials trained side by side in worker
processes give what they give alone (same seed, same torch thread count: the same bits),
errors and Ctrl-C come back to the driver as they do in one process, and the options that
ask for packing refuse what they cannot use."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from dataclasses import replace

import pytest
import torch
from cli_run import error_lines, run_main

from ichbench import checkpoints
from ichbench.config import RunConfig
from ichbench.errors import (
    DataError,
    ExitCode,
    RunBusyError,
    RunFinishedError,
    UsageError,
)
from ichbench.executors import (
    LocalExecutor,
    RemoteError,
    auto_trials_at_once,
    make_executor,
)
from ichbench.lifecycle import Lifecycle
from ichbench.protocol import RunProtocol
from ichbench.store import Store

TINY = dict(
    data="synthetic:8,0,32",
    backbone="tinycnn",
    folds=2,
    epochs=1,
    image_size=32,
    batch_size=16,
    preset="quick",
    device="cpu",
)
TINY_ARGS = [
    "--data",
    "synthetic:8,0,32",
    "--backbone",
    "tinycnn",
    "--folds",
    "2",
    "--epochs",
    "1",
    "--image-size",
    "32",
    "--batch-size",
    "16",
    "--preset",
    "quick",
    "--device",
    "cpu",
]


@pytest.fixture
def one_thread():
    """CPU float sums depend on torch's thread count: the driver trains on one thread, as
    each of two workers does on a two-core share (`LocalExecutor` gives each worker this
    process's threads shared out, at least one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Kept:
    """An executor's trials, passed on to the lifecycle and kept for the test."""

    def __init__(self, executor) -> None:
        self.executor, self.results = executor, []
        self.device_label = executor.device_label

    def trials(self, jobs):
        for result in self.executor.trials(jobs):
            self.results.append(result)
            yield result

    def close(self) -> None:
        self.executor.close()


def stored(store: Store, run_id: str) -> dict:
    """What a run's readers see: status, thresholds, every metric row, every prediction."""
    run = store.get_run(run_id)
    cols, rows = store.query(
        f"SELECT * EXCLUDE (run_id) FROM metrics WHERE run_id = '{run_id}' "
        "ORDER BY model, fold, scope, split"
    )
    _, folds = store.query(
        f"SELECT fold, threshold, best_epoch FROM folds WHERE run_id = '{run_id}' ORDER BY fold"
    )
    _, predictions = store.query(
        "SELECT fold, split, patient_id, slice, prob FROM predictions "
        f"WHERE run_id = '{run_id}' ORDER BY ALL"
    )
    return {
        "status": run["status"],
        "threshold": run["threshold"],
        "metrics": [dict(zip(cols, r)) for r in rows],
        "folds": folds,
        "predictions": predictions,
    }


def states(db, run_id: str, keys) -> dict:
    return {
        key: checkpoints.load_checkpoint(checkpoints.checkpoint_path(db, run_id, key))["state_dict"]
        for key in keys
    }


def assert_same_states(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---------------------------------------------------------------- identical results


@pytest.mark.slow
def test_parallel_folds_store_what_sequential_folds_store(capsys, tmp_path, one_thread):
    results = {}
    for n in ("1", "2"):
        db = tmp_path / f"p{n}.duckdb"
        code, out, err = run_main(capsys, "run", *TINY_ARGS, "--parallel-folds", n, "--db", str(db))
        assert code == 0, err
        store = Store(db, create=False)
        (run,) = store.list_runs()
        keys = sorted(store.finished_folds(run["run_id"]))
        assert keys == [(0, 0), (0, 1)]
        results[n] = (stored(store, run["run_id"]), states(db, run["run_id"], keys))
        assert " fold 1: threshold " in err  # the workers' folds are shown as they finish
    (one, one_states), (two, two_states) = results["1"], results["2"]
    assert one["status"] == two["status"] == "finished"
    assert one == two  # every stored number, bit for bit
    for key in one_states:
        assert_same_states(one_states[key], two_states[key])


@pytest.mark.slow
def test_cli_grid_trials_per_gpu_stores_what_one_by_one_stores(capsys, tmp_path, one_thread):
    """Two configurations × two folds, packed two at once: every trial trains exactly as
    it does alone (stored results and checkpoint weights)."""
    args = ["grid", "--weight", "ich:1,4", *TINY_ARGS]  # --backbone: an axis of one
    found = {}
    for n in ("1", "2"):
        db = tmp_path / f"t{n}.duckdb"
        code, out, err = run_main(capsys, *args, "--trials-per-gpu", n, "--db", str(db))
        assert code == 0, err
        assert ("Packed: 2 trials at once" in err) == (n == "2")
        store = Store(db, create=False)
        runs = store.list_runs()
        assert len(runs) == 2 and all(r["run_id"][:8] in out for r in runs)  # ranked
        found[n] = {
            r["config_hash"]: (
                stored(store, r["run_id"]),
                states(db, r["run_id"], sorted(store.finished_folds(r["run_id"]))),
            )
            for r in runs
        }
    assert sorted(found["1"]) == sorted(found["2"])
    for config, (one, one_states) in found["1"].items():
        two, two_states = found["2"][config]
        assert one == two  # every stored number of every trial, bit for bit
        assert sorted(one_states) == sorted(two_states) == [(0, 0), (0, 1)]
        for key in one_states:
            assert_same_states(one_states[key], two_states[key])


# ---------------------------------------------------------------- errors and Ctrl-C


@pytest.mark.slow
def test_a_workers_error_comes_back_as_itself_and_fails_its_run(tmp_path):
    """A worker that loads other data than the driver recorded refuses to train; the
    driver raises that very error (one line at the CLI) and marks the run failed."""
    store = Store(tmp_path / "runs.duckdb")
    lifecycle = Lifecycle(store)
    job = lifecycle.open(RunProtocol(RunConfig(**TINY)))
    job.dataset = replace(job.dataset, dataset_hash="0" * 64)
    with pytest.raises(DataError, match="every node must see the same data") as raised:
        list(lifecycle.drive([job], LocalExecutor(2)))
    assert raised.value.job_index == 0
    assert "Traceback" in str(raised.value.__cause__)  # the worker's, for --debug
    assert store.get_run(job.run_id)["status"] == "failed"
    assert not multiprocessing.active_children()


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_leaves_the_run_resumable(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    lifecycle = Lifecycle(store)
    workers: list[int] = []

    def ctrl_c(event) -> None:
        """Ctrl-C in a terminal as the first fold starts: SIGINT to the workers and to
        this process (never to the whole process group, which holds the test runner)."""
        if event.kind == "fold_started" and not workers:
            workers.extend(p.pid for p in multiprocessing.active_children())
            for pid in [*workers, os.getpid()]:
                os.kill(pid, signal.SIGINT)

    job = lifecycle.open(RunProtocol(RunConfig(**{**TINY, "epochs": 30}), observers=[ctrl_c]))
    with pytest.raises(KeyboardInterrupt):
        list(lifecycle.drive([job], LocalExecutor(2)))
    assert len(workers) >= 2
    assert not multiprocessing.active_children()
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # ended and reaped
    assert store.get_run(job.run_id)["status"] == "interrupted"


def test_an_error_with_its_own_arguments_crosses_back_as_itself():
    """Exceptions whose __init__ takes more than a message would not unpickle as
    themselves; rebuilt from class, args and attributes they read as they were raised."""
    for exc in (
        RunBusyError("r1", "host:123:456"),
        RunFinishedError("r2"),
        UsageError("fold 3 took no optimiser step"),
    ):
        try:
            raise exc
        except type(exc) as caught:
            report = RemoteError.of(caught)
        again = pickle.loads(pickle.dumps(report)).rebuild()
        assert type(again) is type(exc)
        assert str(again) == str(exc)
        assert again.exit_code == exc.exit_code
        assert getattr(again, "run_id", None) == getattr(exc, "run_id", None)


# ---------------------------------------------------------------- options


def test_the_cpu_packs_one_trial_unless_told():
    assert auto_trials_at_once(torch.device("cpu")) == 1
    assert LocalExecutor().trials_at_once == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--parallel-folds", "0"], "--parallel-folds 0: expected a whole number of 1"),
        (
            ["grid", "--weight", "ich:1,4", "--trials-per-gpu", "0"],
            "--trials-per-gpu 0: expected a whole number of 1",
        ),
        (
            ["grid", "--weight", "ich:1,4", "--executor", "ray", "--gpus-per-trial", "1.5"],
            "--gpus-per-trial 1.5: expected a share of one GPU, more than 0 and at most 1",
        ),
        (
            ["grid", "--weight", "ich:1,4", "--executor", "ray", "--gpus-per-trial", "0"],
            "--gpus-per-trial 0.0: expected a share of one GPU",
        ),
        (
            ["grid", "--weight", "ich:1,4", "--gpus-per-trial", "0.25"],
            "--gpus-per-trial is only for --executor ray",
        ),
        (
            ["grid", "--weight", "ich:1,4", "--executor", "ray", "--trials-per-gpu", "4"],
            "--trials-per-gpu is only for --executor local",
        ),
    ],
)
def test_packing_options_refuse_what_they_cannot_use(capsys, tmp_path, args, message):
    db = tmp_path / "runs.duckdb"
    code, _, err = run_main(capsys, *args, "--db", str(db))
    assert code == ExitCode.USAGE
    (line,) = error_lines(err)
    assert message in line
    assert not db.exists()  # refused before any work


def test_make_executor_checks_the_shares_it_is_given():
    with pytest.raises(UsageError, match="--trials-per-gpu 0"):
        make_executor("local", trials_per_gpu=0)
    with pytest.raises(UsageError, match="only for --executor ray"):
        make_executor("local", gpus_per_trial=0.5)
    assert make_executor("local", trials_per_gpu=3).trials_at_once == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_parallel_folds_share_one_gpu(tmp_path):
    store = Store(tmp_path / "runs.duckdb")
    lifecycle = Lifecycle(store)
    job = lifecycle.open(RunProtocol(RunConfig(**{**TINY, "device": "cuda"})))
    executor = Kept(LocalExecutor(2))
    (result,) = lifecycle.drive([job], executor)
    assert executor.executor.used == 2
    assert store.get_run(result.run_id)["status"] == "finished"
    assert {r.fold for r in executor.results} == {(0, 0), (0, 1)}
    assert not multiprocessing.active_children()
