"""The registry is the test matrix: every registered strategy and aggregation rule runs
through the real protocol on a tiny dataset, and so does a third party's plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_plugins import SAMPLE, fake_install

from ichbench import __version__
from ichbench.config import RunConfig
from ichbench.lifecycle import run_config
from ichbench.plugins import get_registry
from ichbench.store import Store

TINY = dict(
    data="synthetic:14,2,32",
    backbone="tinycnn",
    folds=2,
    epochs=1,
    image_size=16,
    batch_size=32,
    preset="quick",
    device="cpu",
)
EXAMPLE_ARGS = {
    "augment": "augment:2",
    "bootstrap": "bootstrap:2",
    "undersample": "undersample:1",
    "weight": "weight:ich,4",
    "k-consecutive": "k-consecutive:2",
    "topk-mean": "topk-mean:2",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run_tiny(tmp_path: Path, cache: Path, **changes):
    store = Store(tmp_path / "runs.duckdb")
    result = run_config(RunConfig(**{**TINY, **changes}), store, cache_dir=cache)
    assert store.get_run(result.run_id)["status"] == "finished"
    return store, result


@pytest.mark.parametrize("name", get_registry().names("strategy"))
def test_every_strategy_runs_the_protocol(name, tmp_path, cache):
    spec = EXAMPLE_ARGS.get(name, name)
    store, result = run_tiny(tmp_path, cache, strategies=[spec])
    folds = store.folds(result.run_id)
    assert len(folds) == 2
    if name in ("augment", "bootstrap"):
        assert all(f["added"] > 0 and f["train_ich"] > f["train_ich_before"] for f in folds)
    if name == "undersample":
        assert all(
            f["removed"] > 0 and f["train_healthy"] < f["train_healthy_before"] for f in folds
        )


@pytest.mark.parametrize("name", get_registry().names("ensemble"))
def test_every_ensemble_rule_runs_the_protocol(name, tmp_path, cache):
    store, result = run_tiny(tmp_path, cache, ensemble=name)
    assert store.get_run(result.run_id)["ensemble"] == name
    assert len(result.vote.predictions) > 0


@pytest.mark.parametrize("name", get_registry().names("patient"))
def test_every_patient_rule_runs_the_protocol(name, tmp_path, cache):
    store, result = run_tiny(tmp_path, cache, patient_rule=EXAMPLE_ARGS.get(name, name))
    rows = [m for m in result.vote.metrics if m.scope == "patient" and m.split == "test"]
    assert len(rows) == 1 and rows[0].n == len(set(result.vote.predictions.patient_id))


def test_a_third_party_plugin_is_used_by_ichbench_run(tmp_path):
    site = tmp_path / "site-packages"
    site.mkdir()
    fake_install(SAMPLE, site)
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "ICHBENCH_LOAD_PLUGINS": "ichbench-focal",
        "ICHBENCH_CACHE": str(tmp_path / "cache"),
    }
    db = tmp_path / "runs.duckdb"
    cmd = [
        sys.executable,
        "-m",
        "ichbench",
        "run",
        "--data",
        "synthetic:14,2,32",
        "--backbone",
        "tinycnn",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--image-size",
        "16",
        "--strategy",
        "focal:2",
        "--patient-rule",
        "fraction:0.1",
        "--db",
        str(db),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    store = Store(db, create=False)
    (run,) = store.list_runs()
    assert run["status"] == "finished"
    assert "focal:2" in run["strategies"] and run["patient_rule"] == "fraction:0.1"
    assert store.get_run(run["run_id"])["plugins"] == {
        "ichbench": __version__,
        "ichbench-focal": "0.1.0",
    }
