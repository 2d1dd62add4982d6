"""The plugin registry and loader, third-party discovery through real entry points, and
`ichbench plugins`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ichbench import __version__
from ichbench.cli.app import create_app
from ichbench.errors import ExitCode, PluginError, UsageError
from ichbench.hookspecs import hookimpl
from ichbench.interfaces import SliceDataset, StrategyContext, TrainPlan
from ichbench.plugins import LOAD_ENV, Plugins, get_registry, registered, reset_plugins
from ichbench.spec import Spec, parse_spec

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).parent
SAMPLE = HERE / "sample_plugin"
BROKEN = HERE / "broken_plugin"
BUILTIN_MODULES = {
    "ichbench_plugins.strategies",
    "ichbench_plugins.backbones",
    "ichbench_plugins.aggregators",
    "ichbench_plugins.datasets",
}


def fake_install(package: Path, site: Path) -> dict[str, str]:
    """Lay a plugin package out as pip would: its modules plus a `.dist-info` folder whose
    METADATA and entry_points.txt come from the package's own pyproject.toml."""
    pyproject = tomllib.loads((package / "pyproject.toml").read_text())
    project = pyproject["project"]
    for module in pyproject["tool"]["setuptools"]["py-modules"]:
        shutil.copy(package / f"{module}.py", site / f"{module}.py")
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    points = project["entry-points"]["ichbench"]
    (dist_info / "entry_points.txt").write_text(
        "[ichbench]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
    )
    return {
        "name": project["name"],
        "version": project["version"],
        "modules": pyproject["tool"]["setuptools"]["py-modules"],
    }


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site-packages on sys.path; modules imported from it are forgotten after."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith("ichbench_focal") or name.startswith("ichbench_broken"):
            del sys.modules[name]


@pytest.fixture
def fresh_default():
    """Tests that change the environment rebuild the process-wide plugins before and after."""
    reset_plugins()
    yield
    reset_plugins()


def make_plugin(**hooks) -> object:
    """A plugin object with the given hook functions (compared by identity, like a module)."""
    namespace = {name: staticmethod(hookimpl(fn)) for name, fn in hooks.items()}
    return type("TestPlugin", (), namespace)()


def local_plugins(*named: tuple[str, object]) -> Plugins:
    plugins = Plugins(load_entry_points=False)
    for name, plugin in named:
        plugins.register(plugin, name=name, distribution=f"dist-of-{name}", version="1.0")
    return plugins


# --------------------------------------------------------------------------- spec parsing


@pytest.mark.parametrize(
    "text, spec",
    [
        ("augment:3.3", Spec("augment", ("3.3",))),
        ("  resnet50 ", Spec("resnet50", ())),
        ("weight:ich, 4", Spec("weight", ("ich", "4"))),
        (
            "timm:vit_small_patch16_224.augreg_in21k",
            Spec("timm", ("vit_small_patch16_224.augreg_in21k",)),
        ),
    ],
)
def test_spec_parsing(text, spec):
    assert parse_spec(text) == spec
    assert parse_spec(str(spec)) == spec


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "Empty plugin spec"),
        (":3", "has no name"),
        ("augment:", "empty argument"),
        ("weight:ich,,4", "empty argument"),
    ],
)
def test_bad_specs(text, message):
    with pytest.raises(UsageError, match=message):
        parse_spec(text)


# --------------------------------------------------------------------------- registry


def test_collisions_name_both_plugins():
    def strategies(register):
        register("augment", lambda spec: None, help="mine")

    plugins = local_plugins(
        ("first_plugin", make_plugin(register_strategies=strategies)),
        ("second_plugin", make_plugin(register_strategies=strategies)),
    )
    with pytest.raises(PluginError) as info:
        _ = plugins.registry
    message = str(info.value)
    assert "Strategy 'augment' is registered twice" in message
    assert "first_plugin (dist-of-first_plugin)" in message
    assert "second_plugin (dist-of-second_plugin)" in message


def test_a_collision_with_a_builtin_is_fatal_and_always_unregistered(fresh_default):
    def strategies(register):
        register("undersample", lambda spec: None)

    with pytest.raises(PluginError) as info:
        with registered(make_plugin(register_strategies=strategies), "my_plugin"):
            pass
    assert "'undersample' is registered twice" in str(info.value)
    assert "my_plugin (local)" in str(info.value)
    assert "ichbench_plugins.strategies (ichbench)" in str(info.value)
    assert "undersample" in get_registry().names("strategy")  # the built-in still works


def test_unknown_names_suggest_the_closest():
    registry = get_registry()
    with pytest.raises(PluginError) as info:
        registry.create("strategy", "agument:3.3")
    message = str(info.value)
    assert "Unknown strategy 'agument'. Did you mean 'augment'?" in message
    assert "Available: augment, bootstrap, cutmix, mixup, undersample, weight" in message
    with pytest.raises(PluginError, match="Unknown patient rule 'nothing-like-it'. Available: "):
        registry.create("patient", "nothing-like-it")


def test_registered_adds_for_one_block_and_always_removes(fresh_default):
    def backbones(register):
        register("tiny-test-net", lambda spec: None, help="only in this test")

    plugin = make_plugin(register_backbones=backbones)
    with registered(plugin, "temporary") as registry:
        entry = registry.get("backbone", "tiny-test-net")
        assert (entry.plugin, entry.distribution) == ("temporary", "local")
    assert "tiny-test-net" not in get_registry().names("backbone")
    with pytest.raises(RuntimeError), registered(plugin, "temporary"):
        raise RuntimeError("a failing test body")
    assert "tiny-test-net" not in get_registry().names("backbone")


def test_a_misspelled_hook_is_an_error():
    plugin = make_plugin(register_strategy=lambda register: None)
    with pytest.raises(PluginError, match="'typo_plugin' .* is invalid.*register_strategy"):
        local_plugins(("typo_plugin", plugin))


def test_aggregators_must_say_their_kind():
    plugin = make_plugin(register_aggregators=lambda register: register("vote", lambda s: None))
    with pytest.raises(PluginError, match="kind='ensemble' or kind='patient' for 'vote'"):
        _ = local_plugins(("kindless", plugin)).registry


def test_a_hook_that_raises_is_named():
    def strategies(register):
        raise KeyError("oops")

    with pytest.raises(PluginError, match="'raiser' .* failed in register_strategies: KeyError"):
        _ = local_plugins(("raiser", make_plugin(register_strategies=strategies))).registry


def test_builtins_come_from_the_ichbench_distribution(monkeypatch, fresh_default):
    monkeypatch.setenv(LOAD_ENV, "")
    entries = get_registry().entries()
    assert {e.plugin for e in entries} == BUILTIN_MODULES
    assert {e.distribution for e in entries} == {"ichbench"}


# --------------------------------------------------------------------------- third party


def test_a_third_party_plugin_is_found_through_its_entry_point(site, monkeypatch):
    dist = fake_install(SAMPLE, site)
    monkeypatch.setenv(LOAD_ENV, dist["name"])
    registry = Plugins().registry
    for kind, name in (("strategy", "focal"), ("patient", "fraction")):
        entry = registry.get(kind, name)
        assert (entry.plugin, entry.distribution, entry.version) == (
            "ichbench_focal",
            "ichbench-focal",
            "0.1.0",
        )
    assert registry.get("strategy", "augment").distribution == "ichbench"


@pytest.mark.parametrize(
    "selection, loaded",
    [
        ("", False),
        ("someone-else", False),
        ("ichbench-focal", True),
        ("other, ICHBENCH-FOCAL", True),
        (None, True),
    ],
)
def test_the_environment_selects_third_party_plugins(site, monkeypatch, selection, loaded):
    fake_install(SAMPLE, site)
    if selection is None:
        monkeypatch.delenv(LOAD_ENV, raising=False)
    else:
        monkeypatch.setenv(LOAD_ENV, selection)
    assert ("focal" in Plugins().registry.names("strategy")) is loaded


def test_the_sample_plugin_works(site, monkeypatch):
    fake_install(SAMPLE, site)
    monkeypatch.setenv(LOAD_ENV, "ichbench-focal")
    registry = Plugins().registry
    labels = np.array([0, 1, 0, 1], dtype=np.int64)
    dataset = SliceDataset(
        "d",
        "h",
        np.zeros((4, 1, 2, 2), np.uint8),
        labels,
        np.array([1, 1, 2, 2]),
        np.array([1, 2, 1, 2]),
        np.array([0, 0.5, 0, 0.5], np.float32),
        np.zeros((4, 5), np.uint8),
    )
    ctx = StrategyContext(dataset, np.array([1, 2]), np.random.default_rng(0))
    plan = TrainPlan(np.arange(4), np.zeros(4, bool), class_weights=(1.0, 4.0))
    for spec in ("focal:0", "focal:2"):
        out = registry.create("strategy", spec).apply(plan, ctx)
        assert out.notes["loss"] == spec
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2], [-1.0, 1.5], [0.3, 0.1]])
    target = torch.tensor([0, 1, 1, 0])
    weights = torch.tensor(plan.class_weights)
    zero = registry.create("strategy", "focal:0").apply(plan, ctx).loss_factory(weights)
    torch.testing.assert_close(
        zero(logits, target), torch.nn.functional.cross_entropy(logits, target, weight=weights)
    )
    two = registry.create("strategy", "focal:2").apply(plan, ctx).loss_factory(weights)
    assert float(two(logits, target)) < float(zero(logits, target))
    rule = registry.create("patient", "fraction:0.5")
    scores = np.array([0.9, 0.8, 0.1, 0.2])
    assert rule.decide(scores, scores >= 0.5, 0.5)[1] is True
    assert rule.decide(scores, scores >= 0.85, 0.85)[1] is False
    with pytest.raises(UsageError, match="fraction: 1.5 must be <= 1; expected fraction:P"):
        registry.create("patient", "fraction:1.5")
    with pytest.raises(UsageError, match="focal: -1 must be >= 0; expected focal:GAMMA"):
        registry.create("strategy", "focal:-1")


def test_a_broken_plugin_is_named_not_swallowed(site, monkeypatch):
    fake_install(BROKEN, site)
    monkeypatch.setenv(LOAD_ENV, "ichbench-broken")
    with pytest.raises(PluginError) as info:
        Plugins()
    assert str(info.value) == (
        "Plugin 'broken' (ichbench_broken) from ichbench-broken 0.0.1 failed to load: "
        "ImportError: ichbench_broken needs the library 'not_installed_anywhere'"
    )


def test_a_broken_plugin_that_is_not_selected_is_never_imported(site, monkeypatch):
    fake_install(BROKEN, site)
    monkeypatch.setenv(LOAD_ENV, "")
    assert "augment" in Plugins().registry.names("strategy")
    assert "ichbench_broken" not in sys.modules


# --------------------------------------------------------------------------- CLI


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, LOAD_ENV: "", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ichbench", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=HERE,
    )


def test_cli_json_lists_the_builtins():
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["distribution"] for r in rows} == {"ichbench"}
    names = {(r["kind"], r["name"]) for r in rows}
    assert {
        ("strategy", "augment"),
        ("backbone", "resnet50"),
        ("ensemble", "mean"),
        ("patient", "any"),
        ("backbone", "efficientnet_lite0"),
    } <= names
    assert set(rows[0]) == {"kind", "name", "plugin", "distribution", "version", "help"}


@pytest.mark.parametrize("columns", ["200", "80"])
def test_cli_table_shows_kind_name_module_distribution_version_and_help(columns):
    result = run_cli("plugins", env={"COLUMNS": columns})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if " augment " in f" {line} "]
    assert lines, result.stdout
    text = " ".join(result.stdout.split())
    for needle in (
        "strategy",
        "patient rule",
        "ichbench_plugins.strategies",
        "k-consecutive:K",
        "ichbench",
        __version__,
    ):
        assert needle in text
    assert "…" not in result.stdout  # nothing cropped
    assert max(len(line) for line in result.stdout.splitlines()) <= int(columns)


def test_cli_reports_a_broken_plugin_in_one_line(site):
    fake_install(BROKEN, site)
    result = run_cli(
        "plugins",
        env={
            LOAD_ENV: "ichbench-broken",
            "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        },
    )
    assert result.returncode == ExitCode.PLUGIN
    assert result.stderr.strip().splitlines() == [
        "Error: Plugin 'broken' (ichbench_broken) from ichbench-broken 0.0.1 failed to load: "
        "ImportError: ichbench_broken needs the library 'not_installed_anywhere'"
    ]
    assert result.stdout == ""


def test_cli_lists_a_third_party_plugin_with_its_distribution(site, monkeypatch, fresh_default):
    fake_install(SAMPLE, site)
    monkeypatch.setenv(LOAD_ENV, "ichbench-focal")
    result = CliRunner().invoke(create_app(), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.stdout)}
    assert rows[("strategy", "focal")]["distribution"] == "ichbench-focal"
    assert rows[("strategy", "focal")]["version"] == "0.1.0"
    assert rows[("patient", "fraction")]["help"].startswith("fraction:P")


# --------------------------------------------------------------------------- registered()


def test_registered_refuses_a_taken_name_and_never_removes_the_plugin_there(fresh_default):
    def strategies(register):
        register("mine", lambda spec: None)

    with pytest.raises(
        PluginError,
        match=r"A plugin named 'ichbench_plugins.strategies' is "
        r"already registered \(from ichbench\)",
    ):
        with registered(make_plugin(register_strategies=strategies), "ichbench_plugins.strategies"):
            pass
    assert "augment" in get_registry().names("strategy")


def test_registered_refuses_a_plugin_registered_under_another_name(fresh_default):
    import ichbench_plugins.strategies

    with pytest.raises(PluginError, match="already registered as 'ichbench_plugins.strategies'"):
        with registered(ichbench_plugins.strategies, "again"):
            pass
    assert "augment" in get_registry().names("strategy")


# --------------------------------------------------------------------------- warnings


def test_a_register_function_without_hookimpl_is_a_warning():
    def register_strategies(register):
        register("never", lambda spec: None)

    plugin = type("Undecorated", (), {"register_strategies": staticmethod(register_strategies)})()
    plugins = local_plugins(("forgetful", plugin))
    assert plugins.registry.names("strategy") == []
    assert plugins.warnings == [
        "Plugin 'forgetful' (dist-of-forgetful 1.0) defines register_strategies without "
        "@hookimpl, so ichbench never calls it; decorate it with ichbench.hookimpl",
        "Plugin 'forgetful' (dist-of-forgetful 1.0) registered nothing",
    ]


def test_warnings_are_pending_once():
    plugins = local_plugins(("quiet", make_plugin(register_strategies=lambda register: None)))
    assert plugins.pending_warnings() == ["Plugin 'quiet' (dist-of-quiet 1.0) registered nothing"]
    assert plugins.pending_warnings() == []
    assert len(plugins.warnings) == 1


def test_builtins_give_no_warnings(monkeypatch):
    monkeypatch.setenv(LOAD_ENV, "")
    assert Plugins().warnings == []


@pytest.mark.parametrize(
    "selection, warnings",
    [
        ("ichbench-focal", []),
        ("ichbench, ichbench-focal", []),
        (
            "ICHBENCH_Focal",
            [
                "ICHBENCH_LOAD_PLUGINS names 'ICHBENCH_Focal'; write it normalised as "
                "'ichbench-focal'"
            ],
        ),
        (
            "ichbench-focus",
            [
                "ICHBENCH_LOAD_PLUGINS names 'ichbench-focus', which is not an "
                "installed ichbench plugin distribution (installed: "
            ],
        ),
    ],
)
def test_the_plugin_selection_warns_about_names_that_load_nothing_or_only_by_luck(
    site, monkeypatch, selection, warnings
):
    fake_install(SAMPLE, site)
    monkeypatch.setenv(LOAD_ENV, selection)
    plugins = Plugins()
    assert ("focal" in plugins.registry.names("strategy")) is (selection != "ichbench-focus")
    assert len(plugins.warnings) == len(warnings)
    for got, expected in zip(plugins.warnings, warnings):
        assert got.startswith(expected)
    if selection == "ichbench-focus":
        assert "ichbench-focal" in plugins.warnings[0]


def test_cli_prints_each_plugin_warning_once_on_stderr(tmp_path):
    site = tmp_path / "site-packages"
    site.mkdir()
    fake_install(HERE / "faulty_plugin", site)
    result = run_cli(
        "plugins",
        "--json",
        env={LOAD_ENV: "ichbench_faulty,not-installed", "PYTHONPATH": str(site)},
    )
    assert result.returncode == 0, result.stderr
    assert {(r["name"], r["distribution"]) for r in json.loads(result.stdout)} >= {
        ("divide-by-zero", "ichbench-faulty")
    }
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("Warning: ") for line in lines), lines
    text = "\n".join(lines)
    assert len(lines) == 4 and len(set(lines)) == 4
    for needle in (
        "names 'ichbench_faulty'; write it normalised as 'ichbench-faulty'",
        "names 'not-installed', which is not an installed ichbench plugin",
        "Plugin 'ichbench_faulty' (ichbench-faulty 0.2.0) defines register_backbones "
        "without @hookimpl",
        "Plugin 'ichbench_empty' (ichbench-faulty 0.2.0) registered nothing",
    ):
        assert needle in text
