"""A plugin's failure is reported as that plugin's: its factory, the kind of object it
returns and every method call of that object, with the distribution and version; and the
objects the registry creates stay transparent to the core."""

from __future__ import annotations

import copy
import inspect
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_plugins import SAMPLE, fake_install, local_plugins, make_plugin

from ichbench import __version__
from ichbench.blame import protocol_members, unwrap
from ichbench.errors import DataError, ExitCode, PluginError, UsageError
from ichbench.interfaces import (
    Backbone,
    DatasetSource,
    EnsembleRule,
    PatientRule,
    SliceDataset,
    Strategy,
    StrategyContext,
    TrainPlan,
)
from ichbench.plugins import LOAD_ENV, Plugins, get_registry
from ichbench.registry import created_by, plugin_versions
from ichbench_plugins.strategies import Oversample

HERE = Path(__file__).parent
FAULTY = HERE / "faulty_plugin"


@pytest.fixture
def faulty(tmp_path, monkeypatch):
    """The faulty plugin installed through a real entry point, and its registry."""
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    fake_install(FAULTY, site)
    monkeypatch.setenv(LOAD_ENV, "ichbench-faulty")
    yield Plugins().registry
    for name in ("ichbench_faulty", "ichbench_empty"):
        sys.modules.pop(name, None)


def tiny_context() -> tuple[TrainPlan, StrategyContext]:
    labels = np.array([0, 1, 0, 1], dtype=np.int64)
    dataset = SliceDataset(
        "d",
        "h",
        np.zeros((4, 1, 2, 2), np.uint8),
        labels,
        np.array([1, 1, 2, 2]),
        np.array([1, 2, 1, 2]),
        np.array([0, 1, 0, 1], np.float32),
        np.zeros((4, 5), np.uint8),
    )
    ctx = StrategyContext(dataset, np.array([1, 2]), np.random.default_rng(0))
    return TrainPlan(np.arange(4), np.zeros(4, bool)), ctx


# --------------------------------------------------------------------------- a real plugin


def test_a_method_that_raises_is_blamed_on_its_plugin(faulty):
    strategy = faulty.create("strategy", "divide-by-zero")
    with pytest.raises(PluginError) as info:
        strategy.apply(*tiny_context())
    assert str(info.value) == (
        "Strategy 'divide-by-zero' from ichbench-faulty 0.2.0 failed in "
        "apply: ZeroDivisionError: division by zero"
    )
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_a_factory_that_raises_is_blamed_on_its_plugin(faulty):
    with pytest.raises(PluginError) as info:
        faulty.create("strategy", "crashing-factory")
    assert str(info.value) == (
        "Strategy 'crashing-factory' from ichbench-faulty 0.2.0 failed "
        "in its factory: KeyError: 'gamma'"
    )
    assert isinstance(info.value.__cause__, KeyError)


def test_a_factory_that_returns_the_wrong_kind_is_blamed(faulty):
    with pytest.raises(PluginError) as info:
        faulty.create("strategy", "not-a-strategy")
    assert str(info.value) == (
        "Strategy 'not-a-strategy' from ichbench-faulty 0.2.0: its "
        "factory returned int, which is not a Strategy: it has no apply"
    )


def test_the_cli_reports_a_failing_factory_in_one_line(tmp_path):
    site = tmp_path / "site-packages"
    site.mkdir()
    fake_install(FAULTY, site)
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        LOAD_ENV: "ichbench-faulty",
        "HF_HUB_OFFLINE": "1",
        "ICHBENCH_CACHE": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ichbench",
            "run",
            "--data",
            "synthetic:14,2,32",
            "--backbone",
            "tinycnn",
            "--strategy",
            "crashing-factory",
            "--db",
            str(tmp_path / "runs.duckdb"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE,
        timeout=300,
    )
    assert done.returncode == ExitCode.PLUGIN, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: Strategy 'crashing-factory' from ichbench-faulty 0.2.0 failed in "
        "its factory: KeyError: 'gamma'"
    ]
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- what is not blamed


class Raises:
    """A patient rule that raises whatever it was given."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def decide(self, scores, decisions, threshold):
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        DataError("patient 7: no slices"),
        UsageError("bad value"),
        OSError(28, "No space left"),
        MemoryError(),
        KeyboardInterrupt(),
        SystemExit(3),
        type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"),
    ],
)
def test_what_is_not_a_plugin_bug_passes_unchanged(error):
    def aggregators(register):
        register("raises", lambda spec: Raises(error), kind="patient")

    registry = local_plugins(("raiser", make_plugin(register_aggregators=aggregators))).registry
    rule = registry.create("patient", "raises")
    with pytest.raises(type(error)) as info:
        rule.decide(np.zeros(1), np.zeros(1, bool), 0.5)
    assert info.value is error


def test_argument_validation_stays_a_usage_error():
    with pytest.raises(UsageError, match="augment: 'x' is not a number"):
        get_registry().create("strategy", "augment:x")


def test_a_local_plugin_is_blamed_as_local():
    def aggregators(register):
        register("raises", lambda spec: Raises(ValueError("no")), kind="patient")

    plugins = Plugins(load_entry_points=False)
    plugins.register(make_plugin(register_aggregators=aggregators), name="mine")
    with pytest.raises(
        PluginError,
        match=r"^Patient rule 'raises' from local failed in decide: "
        r"ValueError: no$",
    ):
        plugins.registry.create("patient", "raises").decide(np.zeros(1), np.zeros(1), 0.5)


# --------------------------------------------------------------------------- transparency


@pytest.mark.parametrize(
    "kind, spec, protocol",
    [
        ("strategy", "augment:2", Strategy),
        ("backbone", "tinycnn", Backbone),
        ("ensemble", "mean", EnsembleRule),
        ("patient", "k-consecutive:2", PatientRule),
        ("dataset", "synthetic:3,1,32", DatasetSource),
    ],
)
def test_created_objects_pass_the_protocol_checks(kind, spec, protocol):
    obj = get_registry().create(kind, spec)
    assert isinstance(obj, protocol)
    assert isinstance(obj, type(unwrap(obj)))
    for member in protocol_members(kind):  # on the class too, as Python 3.12's check needs
        inspect.getattr_static(obj, member)


def test_a_created_object_reads_writes_compares_and_pickles_as_its_own():
    registry = get_registry()
    strategy = registry.create("strategy", "augment:2.5")
    own = unwrap(strategy)
    assert type(own) is Oversample and isinstance(strategy, Oversample)
    assert strategy.ratio == 2.5 and strategy.transform is True
    assert strategy == own and own == strategy and repr(strategy) == repr(own)
    assert hash(strategy) == hash(own)
    source = registry.create("dataset", "synthetic:3,1,32")
    source.name = "renamed"
    assert unwrap(source).name == "renamed"
    for copied in (pickle.loads(pickle.dumps(strategy)), copy.deepcopy(strategy)):
        assert copied == strategy
        assert created_by(copied).distribution == "ichbench"
        plan, ctx = tiny_context()
        assert len(copied.apply(plan, ctx).indices) == len(strategy.apply(plan, ctx).indices)


def test_a_created_object_knows_its_entry():
    registry = get_registry()
    entry = created_by(registry.create("patient", "topk-mean:3"))
    assert entry is registry.entry_of("patient", "topk-mean:3")
    assert (entry.plugin, entry.distribution, entry.version) == (
        "ichbench_plugins.aggregators",
        "ichbench",
        __version__,
    )
    assert created_by(object()) is None


# --------------------------------------------------------------------------- provenance


def test_plugin_versions_of_a_run(tmp_path, monkeypatch, jpg_sample_dir):
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    fake_install(SAMPLE, site)
    monkeypatch.setenv(LOAD_ENV, "ichbench-focal")
    try:
        registry = Plugins().registry
        used = [
            ("strategy", "focal:2"),
            ("strategy", "augment:3.3"),
            ("backbone", "tinycnn"),
            ("ensemble", "mean"),
            ("patient", "fraction:0.1"),
            ("dataset", str(jpg_sample_dir)),
        ]
        assert plugin_versions(registry, used) == {
            "ichbench": __version__,
            "ichbench-focal": "0.1.0",
        }
        assert plugin_versions(registry, [("dataset", "synthetic:3")]) == {"ichbench": __version__}
        with pytest.raises(PluginError, match="Unknown strategy 'nope'"):
            plugin_versions(registry, [("strategy", "nope")])
    finally:
        sys.modules.pop("ichbench_focal", None)
