"""A grid run over a local Ray instance stores what the local executor stores: the driver
alone writes the store, trials run in Ray workers that reload the data from the cache."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from ichbench.cli.app import main
from ichbench.config import RunConfig
from ichbench.errors import DataError, ExitCode, UsageError
from ichbench.executors import (
    RAY_MISSING,
    LocalExecutor,
    RayExecutor,
    TrialSpec,
    import_ray,
)
from ichbench.grid import Grid, axes_from_options
from ichbench.lifecycle import Lifecycle
from ichbench.protocol import RunProtocol
from ichbench.store import Store

try:
    import ray
except ImportError:
    ray = None


def needs_ray(test):
    """Slow, and skipped where the ray extra is not installed."""
    return pytest.mark.skipif(ray is None, reason="the ray extra is not installed")(
        pytest.mark.slow(test)
    )


TINY = dict(
    data="synthetic:14,1,32",
    backbone="tinycnn",
    folds=3,
    epochs=2,
    image_size=32,
    batch_size=16,
    preset="quick",
    device="cpu",
)


def grid_configs() -> tuple[str, list[RunConfig]]:
    plan = Grid(axes_from_options([], ["ich:1,4"], []), RunConfig(**TINY))
    return plan.grid_id, plan.configs()


def lifecycle_of(executor, store: Store, grid_id: str | None = None) -> Lifecycle:
    return Lifecycle(store, grid_id=grid_id, device_label=executor.device_label)


def plan(executor, cfg: RunConfig, store: Store, grid_id: str | None = None):
    return lifecycle_of(executor, store, grid_id).open(RunProtocol(cfg), reuse=True)


def run_grid(executor, store: Store) -> list[str]:
    grid_id, configs = grid_configs()
    jobs = [plan(executor, cfg, store, grid_id) for cfg in configs]
    lifecycle = lifecycle_of(executor, store, grid_id)
    return [result.run_id for result in lifecycle.drive(jobs, executor)]


def q(store: Store, sql: str, *params) -> list[dict]:
    cols, rows = store.query(sql % params if params else sql)
    return [dict(zip(cols, r)) for r in rows]


def stored(store: Store, run_id: str) -> dict:
    """Everything a grid's ranking and a paper comparison read, keyed stably."""
    run = store.get_run(run_id)
    metrics = q(
        store,
        "SELECT * FROM metrics WHERE run_id = '%s' ORDER BY model, fold, scope, split",
        run_id,
    )
    folds = q(
        store,
        "SELECT fold, threshold, best_epoch, status FROM folds WHERE run_id = '%s' ORDER BY fold",
        run_id,
    )
    vote = store.load_vote_predictions(run_id)
    return {
        "status": run["status"],
        "threshold": run["threshold"],
        "metrics": metrics,
        "folds": folds,
        "vote_prob": vote.prob,
        "vote_key": (vote.patient_id, vote.slice),
    }


def test_grid_without_ray_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "grid",
                "--weight",
                "ich:1,4",
                "--executor",
                "ray",
                "--db",
                str(tmp_path / "runs.duckdb"),
            ]
        )
    assert exit_info.value.code == ExitCode.USAGE
    assert "--executor ray needs the ray extra: pip install" in capsys.readouterr().err
    assert not (tmp_path / "runs.duckdb").exists()  # refused before any work
    with pytest.raises(UsageError) as error:
        import_ray()
    assert (
        str(error.value)
        == RAY_MISSING
        == ("--executor ray needs the ray extra: pip install 'ichbench[ray]'")
    )


def test_address_without_ray_executor_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "grid",
                "--weight",
                "ich:1,4",
                "--address",
                "auto",
                "--db",
                str(tmp_path / "runs.duckdb"),
            ]
        )
    assert exit_info.value.code == ExitCode.USAGE
    assert "--address is only for --executor ray" in capsys.readouterr().err


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def both_grids(local_ray, tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("ray-grid")
    monkeypatch_module.setenv("ICHBENCH_CACHE", str(root / "cache"))
    monkeypatch_module.setenv("ICHBENCH_LOAD_PLUGINS", "")
    local_store = Store(root / "local.duckdb")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums depend on the thread count; a Ray trial uses one
    try:
        local_ids = run_grid(LocalExecutor(), local_store)
    finally:
        torch.set_num_threads(threads)
    ray_store = Store(root / "ray.duckdb")
    executor = RayExecutor(cpus_per_trial=1)
    ray_ids = run_grid(executor, ray_store)
    return local_store, local_ids, ray_store, ray_ids, executor


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture
def grid_cache(both_grids, monkeypatch):
    """The cache the grids used, so later tests do not regenerate the data."""
    *_, executor = both_grids
    monkeypatch.setenv("ICHBENCH_CACHE", executor.env["ICHBENCH_CACHE"])


@needs_ray
def test_ray_executor_joins_the_running_instance_and_leaves_it_running(both_grids):
    *_, executor = both_grids
    assert executor.device == "cpu" and executor.gpus == 0
    executor.close()
    assert ray.is_initialized()  # it did not start this instance, so it must not stop it


@needs_ray
def test_ray_grid_finishes_every_configuration(both_grids):
    _, _, ray_store, ray_ids, _ = both_grids
    assert len(ray_ids) == 2
    for run_id in ray_ids:
        run = ray_store.get_run(run_id)
        assert run["status"] == "finished"
        assert run["device"].startswith("ray:cpu")
        assert ray_store.finished_folds(run_id) == {(0, 0), (0, 1), (0, 2)}


@needs_ray
def test_ray_grid_stores_what_the_local_executor_stores(both_grids):
    local_store, local_ids, ray_store, ray_ids, _ = both_grids
    by_hash = {local_store.get_run(r)["config_hash"]: r for r in local_ids}
    assert sorted(by_hash) == sorted(ray_store.get_run(r)["config_hash"] for r in ray_ids)
    for ray_id in ray_ids:
        a = stored(local_store, by_hash[ray_store.get_run(ray_id)["config_hash"]])
        b = stored(ray_store, ray_id)
        assert a["status"] == b["status"] == "finished"
        assert a["threshold"] == b["threshold"]
        assert a["folds"] == b["folds"]
        np.testing.assert_array_equal(a["vote_key"][0], b["vote_key"][0])
        np.testing.assert_array_equal(a["vote_key"][1], b["vote_key"][1])
        np.testing.assert_allclose(a["vote_prob"], b["vote_prob"], atol=1e-6, rtol=0)
        assert len(a["metrics"]) == len(b["metrics"]) == 3 * 2 * 2 + 2 * 2
        for ma, mb in zip(a["metrics"], b["metrics"]):
            assert (ma["model"], ma["fold"], ma["scope"], ma["split"]) == (
                mb["model"],
                mb["fold"],
                mb["scope"],
                mb["split"],
            )
            for name in ("tp", "fp", "tn", "fn", "n", "threshold"):
                assert ma[name] == mb[name], (name, ma)
            for name in ("sensitivity", "specificity", "precision", "f1", "accuracy", "auc"):
                if ma[name] is None:
                    assert mb[name] is None
                else:
                    assert mb[name] == pytest.approx(ma[name], abs=1e-6), (name, ma)


@needs_ray
def test_rerun_finds_every_configuration_finished(both_grids, grid_cache):
    _, _, ray_store, ray_ids, executor = both_grids
    grid_id, configs = grid_configs()
    found = [plan(executor, cfg, ray_store, grid_id) for cfg in configs]
    assert sorted(found) == sorted(ray_ids)


@needs_ray
def test_worker_refuses_data_other_than_the_drivers(both_grids, grid_cache):
    """A node whose data differ from the driver's fails the trial with a domain error, is
    not retried, and the run is marked failed, not finished."""
    _, _, _, _, executor = both_grids
    cfg = RunConfig(**TINY, weights=["ich:2"])
    store = Store(both_grids[0].path.parent / "bad.duckdb")
    job = plan(executor, cfg, store)
    job.dataset = _with_hash(job.dataset, "0" * 64)
    with pytest.raises(DataError, match="every node must see the same data"):
        list(lifecycle_of(executor, store).drive([job], executor))
    assert store.get_run(job.run_id)["status"] == "failed"


def _with_hash(dataset, digest: str):
    from dataclasses import replace

    return replace(dataset, dataset_hash=digest)


@needs_ray
def test_trial_spec_round_trips_through_ray(local_ray):
    spec = TrialSpec(
        config={"data": "x"},
        fold=1,
        config_hash="h",
        dataset_hash="d",
        split_hash="s",
        pretrained=False,
        pretrained_source=None,
    )
    echoed = ray.get(ray.remote(lambda s: s).remote(spec))
    assert echoed == spec


@needs_ray
def test_cli_grid_over_ray_then_local_finds_it_finished(local_ray, grid_cache, tmp_path, capsys):
    db = str(tmp_path / "runs.duckdb")
    args = [
        "grid",
        "--data",
        "synthetic:14,1,32",
        "--backbone",
        "tinycnn",
        "--weight",
        "ich:1,4",
        "--folds",
        "3",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--device",
        "cpu",
        "--preset",
        "quick",
        "--db",
        db,
    ]
    main(args + ["--executor", "ray", "--name", "over-ray", "--tag", "cluster"])
    captured = capsys.readouterr()
    assert captured.err.count("Finished ") == 2
    assert " fold 2: threshold " in captured.err
    runs = Store(db).list_runs()
    assert len(runs) == 2 and {r["status"] for r in runs} == {"finished"}
    assert {(r["name"], tuple(r["tags"])) for r in runs} == {("over-ray", ("cluster",))}
    assert all(r["run_id"][:8] in captured.out for r in runs)  # the ranking table
    main(args)  # the local executor resumes nothing: both configurations are finished
    again = " ".join(capsys.readouterr().err.split())
    assert again.count("already finished as") == 2
    assert len(Store(db).list_runs()) == 2


@needs_ray
def test_trials_lost_with_their_worker_are_retried_domain_errors_are_not(both_grids, tmp_path):
    # defined here so that Ray ships them by value: workers cannot import this test module
    def crash_once(marker: str) -> int:
        """Kills its worker process the first time, as a node lost mid-trial would."""
        import os
        from pathlib import Path

        path = Path(marker)
        calls = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(calls))
        if calls == 1:
            os._exit(1)
        return calls

    def data_error(marker: str) -> None:
        from pathlib import Path

        from ichbench.errors import DataError

        path = Path(marker)
        path.write_text(str(int(path.read_text()) + 1 if path.exists() else 1))
        raise DataError("bad data")

    *_, executor = both_grids
    options = executor.task_options()
    assert options["num_gpus"] == 0 and options["max_retries"] >= 1
    assert ray.get(ray.remote(crash_once).options(**options).remote(str(tmp_path / "c"))) == 2
    with pytest.raises(DataError):
        ray.get(ray.remote(data_error).options(**options).remote(str(tmp_path / "e")))
    assert (tmp_path / "e").read_text() == "1"


@needs_ray
def test_a_fractional_gpu_share_goes_into_the_task_options(local_ray):
    executor = RayExecutor(gpus_per_trial=0.25)
    assert executor.gpus == 0 and executor.task_options()["num_gpus"] == 0  # a CPU cluster
    executor.gpus = 1.0  # what a cluster with one GPU reports: four trials share it
    options = executor.task_options()
    assert options["num_gpus"] == 0.25 and options["num_cpus"] == 1
    assert executor.describe().endswith("0.25 GPU and 1 CPU per trial")
    assert RayExecutor(gpus_per_trial=1).task_options()["num_gpus"] == 0
    for share in (0, -0.5, 1.5):
        with pytest.raises(UsageError, match=f"--gpus-per-trial {share}: expected a share"):
            RayExecutor(gpus_per_trial=share)


@needs_ray
def test_cli_grid_with_a_gpu_share_completes_on_a_cpu_cluster(
    local_ray, grid_cache, tmp_path, capsys
):
    db = str(tmp_path / "runs.duckdb")
    main(
        [
            "grid",
            "--data",
            "synthetic:14,1,32",
            "--backbone",
            "tinycnn",
            "--weight",
            "ich:1,4",
            "--folds",
            "3",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--device",
            "cpu",
            "--preset",
            "quick",
            "--executor",
            "ray",
            "--gpus-per-trial",
            "0.25",
            "--db",
            db,
        ]
    )
    captured = capsys.readouterr()
    assert captured.err.count("Finished ") == 2
    runs = Store(db).list_runs()
    assert len(runs) == 2 and {r["status"] for r in runs} == {"finished"}
